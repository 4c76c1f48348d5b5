//! `nines-collector`: the command line. Thin: everything is in the library.
//! It must never change the system before every flag has been checked.

use clap::{Parser, Subcommand};
use nines_agent::systemd::{self, InstallError, InstallFlags, Service, UninstallFlags};
use nines_collector::config::{CollectorConfig, DEFAULT_DATA_DIR, Overrides};
use std::path::Path;
use std::process::ExitCode;

/// The collector's installation: its unit, config and state directory.
const COLLECTOR: Service = Service {
    name: "nines-collector",
    unit: include_str!("../../deploy/nines-collector.service"),
    config_path: "/etc/nines/collector.toml",
    credential: "collector.toml",
    state_dir: DEFAULT_DATA_DIR,
};

#[derive(Parser)]
#[command(
    name = "nines-collector",
    version,
    about = "Stores, queries and serves nines monitoring data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and UI, ingest pushes, and sample this host.
    Serve(Overrides),
    /// Install as a systemd service: the binary, a config from these flags
    /// (the same as `serve` takes) and the unit; then enable and start it.
    Install {
        #[command(flatten)]
        settings: Overrides,
        #[command(flatten)]
        install: InstallFlags,
    },
    /// Stop and remove the systemd service; --purge also removes its config
    /// and data.
    Uninstall(UninstallFlags),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(o) => serve(o),
        Command::Install { settings, install } => {
            // Exactly the checks `serve` makes, so a flag that would stop
            // the service stops the installation instead.
            let cfg = match CollectorConfig::resolve(&settings) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("nines-collector: {e}");
                    return ExitCode::from(2);
                }
            };
            let res = install_config(&settings, &cfg)
                .and_then(|text| systemd::plan_install(&COLLECTOR, &install, text))
                .and_then(|plan| {
                    systemd::execute(&plan, "nines-collector install", install.dry_run)
                });
            finish(res)
        }
        Command::Uninstall(flags) => {
            let res = systemd::plan_uninstall(&COLLECTOR, &flags).and_then(|plan| {
                systemd::execute(&plan, "nines-collector uninstall", flags.dry_run)
            });
            finish(res)
        }
    }
}

/// The config `install` writes: the `--config` file (if any) with the
/// flags' settings on top. The data dir is the unit's (ExecStart passes
/// --data-dir, which would silently win over the file), so another is
/// refused.
fn install_config(
    o: &Overrides,
    cfg: &CollectorConfig,
) -> Result<systemd::ConfigText, InstallError> {
    if cfg.data_dir != Path::new(DEFAULT_DATA_DIR) {
        return Err(InstallError::Usage(format!(
            "data dir {}: the unit gives the collector {DEFAULT_DATA_DIR} (StateDirectory=) \
             and nothing else is writable under its sandbox; leave --data-dir (and data_dir) out",
            cfg.data_dir.display()
        )));
    }
    let s = |v: &String| Some(toml::Value::String(v.clone()));
    let mut set = Vec::new();
    for (key, v) in [
        ("listen", &o.listen),
        ("agent_token", &o.agent_token),
        ("local_agent_interval", &o.local_agent_interval),
        ("log_format", &o.log_format),
    ] {
        if let Some(v) = v {
            set.push((key, s(v)));
        }
    }
    if o.no_local_agent {
        set.push(("local_agent", Some(toml::Value::Boolean(false))));
    }
    let header = "# nines-collector settings, written by `nines-collector install` (mode\n\
                  # 0600: it may hold the agent token). Keys left out take their defaults;\n\
                  # see deploy/nines-collector.toml for every key. The unit reads this file\n\
                  # through LoadCredential=, so edit it here and\n\
                  # `systemctl restart nines-collector`.\n";
    systemd::config_text(header, o.config.as_deref(), set, &["agent_token"])
}

fn finish(res: Result<(), InstallError>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines-collector: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn serve(o: Overrides) -> ExitCode {
    let cfg = match CollectorConfig::resolve(&o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nines-collector: {e}");
            return ExitCode::from(2);
        }
    };
    nines_agent::logging::init(cfg.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nines-collector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let stop = nines_agent::run::stop_on_signal();
        nines_collector::serve::serve(cfg, stop).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
