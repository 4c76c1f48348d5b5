//! `nines-agent`: the command line. Thin: everything is in the library.

use clap::{Parser, Subcommand};
use nines_agent::config::{AgentConfig, Overrides};

#[derive(Parser)]
#[command(
    name = "nines-agent",
    version,
    about = "Samples this host and pushes to nines collectors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample this host and push to the collector until stopped.
    Run(Overrides),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(o) => {
            let cfg = match AgentConfig::resolve(&o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("nines-agent: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            nines_agent::logging::init(cfg.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("nines-agent: cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let res = rt.block_on(async {
                let stop = nines_agent::run::stop_on_signal();
                nines_agent::run::run(cfg, stop).await
            });
            match res {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("nines-agent: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
