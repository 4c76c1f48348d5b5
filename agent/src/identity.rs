//! The agent's stable id: made once, kept in the state dir, so that a
//! collector can tell this host's streams apart from others across restarts.

use std::io::Write;
use std::path::Path;

const FILE: &str = "agent-id";

/// Reads the id from `state_dir`, creating the dir and the id if needed.
pub fn load_or_create(state_dir: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_string();
    // Write then rename, so a crash never leaves a half-written id.
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::load_or_create(&dir.path().join("state")).unwrap();
        let b = super::load_or_create(&dir.path().join("state")).unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(a, b);
    }
}
