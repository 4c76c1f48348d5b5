//! The collector binary's command line: help, version, and refusing bad
//! flags before opening anything.

use std::process::Command;

fn collector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nines-collector"))
}

#[test]
fn version_and_help_describe_the_binary() {
    let out = collector().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("nines-collector "));
    let out = collector().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--agent-token",
        "--no-local-agent",
        "--config",
    ] {
        assert!(help.contains(flag), "{flag} missing from help:\n{help}");
    }
}

#[test]
fn a_short_token_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = collector()
        .args(["serve", "--agent-token", "short", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`agent_token`"), "{err}");
    assert!(!data.exists());
}
