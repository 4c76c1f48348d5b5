//! `slo.db` in the data dir: the SLOs created through the API, as their
//! JSON definitions, so they survive a restart. SLOs from the config file
//! are never stored here.

use super::spec::SloDefinition;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Mutex;

/// The file name in the data dir.
pub const SLO_DB_FILE: &str = "slo.db";

/// The API-defined SLOs on disk.
pub struct SloStore {
    conn: Mutex<Connection>,
}

/// Why `slo.db` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SloStoreError {
    /// SQLite failed.
    #[error("{SLO_DB_FILE}: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored definition is not readable.
    #[error("{SLO_DB_FILE}: SLO {name:?} is not a readable definition: {reason}")]
    Corrupt {
        /// The row's name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl SloStore {
    /// Opens (creating) the store.
    pub fn open(path: &Path) -> Result<SloStore, SloStoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS slos (
                 name TEXT PRIMARY KEY,
                 definition TEXT NOT NULL,
                 updated_at INTEGER NOT NULL
             )",
        )?;
        Ok(SloStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every stored definition, by name.
    pub fn load(&self) -> Result<Vec<SloDefinition>, SloStoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, definition FROM slos ORDER BY name")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(name, text)| {
                serde_json::from_str(&text).map_err(|e| SloStoreError::Corrupt {
                    name,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Inserts or replaces a definition.
    pub fn put(&self, def: &SloDefinition, now_ms: i64) -> Result<(), SloStoreError> {
        let text = serde_json::to_string(def).map_err(|e| SloStoreError::Corrupt {
            name: def.name.clone(),
            reason: e.to_string(),
        })?;
        self.conn().execute(
            "INSERT INTO slos (name, definition, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET definition = ?2, updated_at = ?3",
            params![def.name, text, now_ms],
        )?;
        Ok(())
    }

    /// Deletes a definition.
    pub fn delete(&self, name: &str) -> Result<(), SloStoreError> {
        self.conn()
            .execute("DELETE FROM slos WHERE name = ?1", params![name])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::spec::IndicatorDefinition;

    #[test]
    fn definitions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SLO_DB_FILE);
        let mut def = SloDefinition {
            name: "a".into(),
            description: "d".into(),
            objective: 99.0,
            window: Some("7d".into()),
            missing_data: None,
            indicator: IndicatorDefinition {
                kind: "probe".into(),
                probe: Some("p".into()),
                ..Default::default()
            },
            burn_alerts: None,
            budget_alert: None,
        };
        {
            let s = SloStore::open(&path).unwrap();
            s.put(&def, 1).unwrap();
            def.objective = 99.5;
            s.put(&def, 2).unwrap();
        }
        let s = SloStore::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), vec![def]);
        s.delete("a").unwrap();
        assert!(s.load().unwrap().is_empty());
    }
}
