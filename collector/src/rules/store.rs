//! Alert state kept across restarts, in its own small SQLite file
//! (`rules.db` in the data dir): per group, rule and label set, the state,
//! when it became active, fired and resolved, and the last value. Saved
//! after every group evaluation, read once at start.

use super::alerting::{Alert, AlertState};
use nines_shared::Labels;
use rusqlite::{Connection, params};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Name of the file in the data dir.
pub const RULES_DB_FILE: &str = "rules.db";

/// Identifies a rule across restarts: its group and, within the group, the
/// alert name and which rule of that name it is (usually the first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// The group's file (or built-in source).
    pub file: String,
    /// The group's name.
    pub group: String,
    /// The alert name.
    pub alert: String,
    /// 0 for the first rule with this name in the group, 1 for the next...
    pub occurrence: usize,
}

/// The persisted alert state.
pub struct StateStore {
    conn: Mutex<Connection>,
}

impl StateStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<StateStore, rusqlite::Error> {
        let conn = crate::sidecar::open(
            path,
            crate::sidecar::Durability::Normal,
            "CREATE TABLE IF NOT EXISTS alert_state (
                file TEXT NOT NULL,
                grp TEXT NOT NULL,
                alert TEXT NOT NULL,
                occurrence INTEGER NOT NULL,
                labels TEXT NOT NULL,
                annotations TEXT NOT NULL,
                state TEXT NOT NULL,
                active_at INTEGER NOT NULL,
                fired_at INTEGER,
                resolved_at INTEGER,
                keep_firing_since INTEGER,
                value_bits INTEGER NOT NULL,
                PRIMARY KEY (file, grp, alert, occurrence, labels)
            );",
        )?;
        Ok(StateStore {
            conn: Mutex::new(conn),
        })
    }

    /// Replaces the stored alerts of one group with `alerts`.
    pub fn save_group(
        &self,
        file: &str,
        group: &str,
        alerts: &[(RuleKey, Vec<Alert>)],
    ) -> Result<(), rusqlite::Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM alert_state WHERE file = ?1 AND grp = ?2",
            params![file, group],
        )?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO alert_state (file, grp, alert, occurrence, labels,
                   annotations, state, active_at, fired_at, resolved_at, keep_firing_since,
                   value_bits) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for (key, list) in alerts {
                for a in list {
                    ins.execute(params![
                        key.file,
                        key.group,
                        key.alert,
                        key.occurrence as i64,
                        serde_json::to_string(&a.labels).unwrap_or_default(),
                        serde_json::to_string(&a.annotations).unwrap_or_default(),
                        a.state.as_str(),
                        a.active_at,
                        a.fired_at,
                        a.resolved_at,
                        a.keep_firing_since,
                        a.value.to_bits() as i64,
                    ])?;
                }
            }
        }
        tx.commit()
    }

    /// Every stored alert, by rule.
    pub fn load(&self) -> Result<BTreeMap<RuleKey, Vec<Alert>>, rusqlite::Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare(
            "SELECT file, grp, alert, occurrence, labels, annotations, state, active_at,
                    fired_at, resolved_at, keep_firing_since, value_bits FROM alert_state",
        )?;
        let mut rows = stmt.query([])?;
        let mut out: BTreeMap<RuleKey, Vec<Alert>> = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let labels: String = r.get(4)?;
            let annotations: String = r.get(5)?;
            let state: String = r.get(6)?;
            let (Ok(labels), Ok(annotations), Some(state)) = (
                serde_json::from_str::<Labels>(&labels),
                serde_json::from_str::<BTreeMap<String, String>>(&annotations),
                AlertState::parse(&state),
            ) else {
                tracing::warn!("rules.db: skipping an unreadable alert row");
                continue;
            };
            let key = RuleKey {
                file: r.get(0)?,
                group: r.get(1)?,
                alert: r.get(2)?,
                occurrence: r.get::<_, i64>(3)? as usize,
            };
            out.entry(key).or_default().push(Alert {
                labels,
                annotations,
                state,
                active_at: r.get(7)?,
                fired_at: r.get(8)?,
                resolved_at: r.get(9)?,
                keep_firing_since: r.get(10)?,
                value: f64::from_bits(r.get::<_, i64>(11)? as u64),
            });
        }
        Ok(out)
    }

    /// Forgets groups no longer loaded.
    pub fn retain_groups(&self, groups: &[(String, String)]) -> Result<(), rusqlite::Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let stored: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT DISTINCT file, grp FROM alert_state")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (f, g) in stored {
            if !groups.iter().any(|(kf, kg)| *kf == f && *kg == g) {
                tx.execute(
                    "DELETE FROM alert_state WHERE file = ?1 AND grp = ?2",
                    params![f, g],
                )?;
            }
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_round_trip_and_dropped_groups_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RULES_DB_FILE);
        let key = RuleKey {
            file: "r.yml".into(),
            group: "g".into(),
            alert: "A".into(),
            occurrence: 0,
        };
        let alert = Alert {
            labels: Labels::new("", [("alertname", "A"), ("instance", "x")]),
            annotations: [("summary".to_string(), "s".to_string())].into(),
            state: AlertState::Firing,
            active_at: 1000,
            fired_at: Some(3000),
            resolved_at: None,
            keep_firing_since: None,
            value: f64::NAN,
        };
        {
            let s = StateStore::open(&path).unwrap();
            s.save_group("r.yml", "g", &[(key.clone(), vec![alert.clone()])])
                .unwrap();
            s.save_group(
                "r.yml",
                "other",
                &[(
                    RuleKey {
                        group: "other".into(),
                        ..key.clone()
                    },
                    vec![alert.clone()],
                )],
            )
            .unwrap();
        }
        let s = StateStore::open(&path).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.len(), 2);
        let got = &loaded[&key][0];
        assert!(got.value.is_nan());
        assert_eq!(got.labels, alert.labels);
        assert_eq!(
            (got.state, got.active_at, got.fired_at),
            (AlertState::Firing, 1000, Some(3000))
        );
        s.retain_groups(&[("r.yml".into(), "g".into())]).unwrap();
        assert_eq!(s.load().unwrap().len(), 1);
        s.save_group("r.yml", "g", &[]).unwrap();
        assert!(s.load().unwrap().is_empty());
    }
}
