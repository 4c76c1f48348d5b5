//! `nines-agent`: the command line. Thin: everything is in the library.
//! It must never change the system before every flag has been checked.

use clap::{Parser, Subcommand};
use nines_agent::config::{AgentConfig, Overrides};
use nines_agent::systemd::{self, InstallFlags, UninstallFlags};
use std::process::ExitCode;

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
    /// Install as a systemd service: the binary, a config from these flags
    /// (the same as `run` takes) and the unit; then enable and start it.
    Install {
        #[command(flatten)]
        settings: Overrides,
        #[command(flatten)]
        install: InstallFlags,
    },
    /// Stop and remove the systemd service; --purge also removes its config
    /// and state.
    Uninstall(UninstallFlags),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(o) => run(o),
        Command::Install { settings, install } => {
            // Exactly the checks `run` makes, so a flag that would stop the
            // service stops the installation instead.
            let cfg = match AgentConfig::resolve(&settings) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("nines-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            let res = systemd::agent_config(&settings, &cfg)
                .and_then(|text| systemd::plan_install(&systemd::AGENT, &install, text))
                .and_then(|plan| systemd::execute(&plan, "nines-agent install", install.dry_run));
            finish(res)
        }
        Command::Uninstall(flags) => {
            let res = systemd::plan_uninstall(&systemd::AGENT, &flags)
                .and_then(|plan| systemd::execute(&plan, "nines-agent uninstall", flags.dry_run));
            finish(res)
        }
    }
}

fn finish(res: Result<(), systemd::InstallError>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nines-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(o: Overrides) -> ExitCode {
    let cfg = match AgentConfig::resolve(&o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nines-agent: {e}");
            return ExitCode::from(2);
        }
    };
    nines_agent::logging::init(cfg.log_format);
    nines_agent::footprint::one_heap();
    // One thread does all the network work (pushes, probes, StatsD,
    // /metrics); sampling rounds and spool appends run on a sampling
    // thread of their own (spool reads on the blocking pool), so they
    // never delay a probe's timings.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nines-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let stop = nines_agent::run::stop_on_signal();
        nines_agent::run::run(cfg, stop).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nines-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
