//! `nines-collector`: the command line. Thin: everything is in the library.

use clap::{Parser, Subcommand};
use nines_collector::config::{CollectorConfig, Overrides};

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
}

fn main() -> std::process::ExitCode {
    let Command::Serve(o) = Cli::parse().command;
    let cfg = match CollectorConfig::resolve(&o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nines-collector: {e}");
            return std::process::ExitCode::from(2);
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
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let stop = nines_agent::run::stop_on_signal();
        nines_collector::serve::serve(cfg, stop).await
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines-collector: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
