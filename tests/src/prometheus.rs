//! A real Prometheus server for differential tests and benchmarks: started
//! on a free loopback port with its own config and TSDB directory, waited
//! for until ready, killed when dropped.

use crate::{free_port, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl Prometheus {
    /// Starts `binary` with its files under `dir` (created if missing): a
    /// config of `global` settings `config` (YAML lines under `global:`), the
    /// TSDB in `tsdb` (or `dir/tsdb`), the log in `dir/prometheus.log`, and
    /// the extra flags `args`.
    pub fn start(
        binary: &Path,
        dir: &Path,
        global: &str,
        tsdb: Option<&Path>,
        args: &[&str],
    ) -> Prometheus {
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, format!("global:\n  {global}\n")).expect("prometheus config");
        let tsdb = tsdb.map_or_else(|| dir.join("tsdb"), Path::to_path_buf);
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log"))
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        wait_for("prometheus to be ready", || {
            let r = crate::http()
                .get(format!("{}/-/ready", p.url))
                .send()
                .ok()?;
            r.status().is_success().then_some(())
        });
        p
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
