//! The agent binary's command line: help, version, and refusing bad flags
//! before doing anything.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nines-agent"))
}

#[test]
fn version_and_help_describe_the_binary() {
    let out = agent().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("nines-agent "));
    let out = agent().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--collector",
        "--token",
        "--interval",
        "--state-dir",
        "--config",
    ] {
        assert!(help.contains(flag), "{flag} missing from help:\n{help}");
    }
}

#[test]
fn a_bad_interval_stops_the_agent_with_the_key() {
    let out = agent()
        .args([
            "run",
            "--collector",
            "http://127.0.0.1:1",
            "--interval",
            "0s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`interval`"), "{err}");
}
