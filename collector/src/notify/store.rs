//! `notify.db` in the data dir: the outbox (every notification, written and
//! committed before its first send attempt, with its attempts, next try,
//! delivery or give-up and last error) and the silences. One connection
//! behind a mutex; callers on async tasks reach it through
//! `spawn_blocking`.
//!
//! Never sends anything and never deletes a pending notification.

use super::matcher::Matcher;
use super::silence::{Silence, matcher_from_json, matcher_json};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value as Json, json};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

/// Name of the file in the data dir.
pub const NOTIFY_DB_FILE: &str = "notify.db";

/// A notification to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// Receiver name.
    pub receiver: String,
    /// Group key (webhooks) or `alertmanager`.
    pub group_key: String,
    /// `webhook` or `alertmanager`.
    pub kind: &'static str,
    /// The URL it goes to.
    pub target: String,
    /// The exact body.
    pub body: Vec<u8>,
    /// Firing alerts in it.
    pub firing: BTreeSet<u64>,
    /// Resolved alerts in it.
    pub resolved: BTreeSet<u64>,
}

/// A queued notification.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Row id.
    pub id: i64,
    /// Receiver name.
    pub receiver: String,
    /// `webhook` or `alertmanager`.
    pub kind: String,
    /// URL.
    pub target: String,
    /// Body.
    pub body: Vec<u8>,
    /// When queued (ms).
    pub created_at: i64,
    /// Attempts so far.
    pub attempts: i64,
}

/// What the last notification of a group said, for deduplication after a
/// restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastSent {
    /// Firing alerts.
    pub firing: BTreeSet<u64>,
    /// Resolved alerts.
    pub resolved: BTreeSet<u64>,
    /// When (ms).
    pub at: i64,
}

/// The database.
pub struct NotifyStore {
    conn: Mutex<Connection>,
}

fn keys(s: &BTreeSet<u64>) -> String {
    let v: Vec<String> = s.iter().map(|k| format!("{k:016x}")).collect();
    v.join(",")
}

fn parse_keys(s: &str) -> BTreeSet<u64> {
    s.split(',')
        .filter_map(|k| u64::from_str_radix(k, 16).ok())
        .collect()
}

fn time(ms: Option<i64>) -> Json {
    match ms {
        Some(ms) => Json::String(super::alert::rfc3339(Some(ms))),
        None => Json::Null,
    }
}

impl NotifyStore {
    /// Opens or creates the file.
    pub fn open(path: &Path) -> rusqlite::Result<NotifyStore> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> rusqlite::Result<NotifyStore> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> rusqlite::Result<NotifyStore> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                receiver TEXT NOT NULL,
                group_key TEXT NOT NULL,
                kind TEXT NOT NULL,
                target TEXT NOT NULL,
                body BLOB NOT NULL,
                firing_keys TEXT NOT NULL,
                resolved_keys TEXT NOT NULL,
                firing INTEGER NOT NULL,
                resolved INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                last_attempt_at INTEGER,
                next_attempt_at INTEGER NOT NULL,
                delivered_at INTEGER,
                last_error TEXT NOT NULL DEFAULT ''
            );
            CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, next_attempt_at);
            CREATE TABLE IF NOT EXISTS silences (
                id TEXT PRIMARY KEY,
                matchers TEXT NOT NULL,
                starts_at INTEGER NOT NULL,
                ends_at INTEGER NOT NULL,
                created_by TEXT NOT NULL,
                comment TEXT NOT NULL,
                updated_at INTEGER NOT NULL
            );",
        )?;
        Ok(NotifyStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues notifications in one transaction; returns their ids.
    pub fn enqueue(&self, ns: &[NewNotification], now: i64) -> rusqlite::Result<Vec<i64>> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let mut ids = Vec::new();
        for n in ns {
            tx.execute(
                "INSERT INTO outbox (receiver, group_key, kind, target, body, firing_keys,
                    resolved_keys, firing, resolved, created_at, status, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?10)",
                params![
                    n.receiver,
                    n.group_key,
                    n.kind,
                    n.target,
                    n.body,
                    keys(&n.firing),
                    keys(&n.resolved),
                    n.firing.len() as i64,
                    n.resolved.len() as i64,
                    now
                ],
            )?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Pending notifications due at `now`, oldest first; a webhook row
    /// waits while an older one of the same receiver, group and URL is
    /// pending, so a receiver never sees "resolved" before "firing".
    pub fn due(
        &self,
        now: i64,
        skip: &BTreeSet<i64>,
        limit: usize,
    ) -> rusqlite::Result<Vec<Queued>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT id, receiver, kind, target, body, created_at, attempts FROM outbox o
             WHERE status = 'pending' AND next_attempt_at <= ?1
               AND (kind <> 'webhook' OR NOT EXISTS (
                   SELECT 1 FROM outbox p WHERE p.status = 'pending' AND p.id < o.id
                     AND p.receiver = o.receiver AND p.group_key = o.group_key
                     AND p.target = o.target))
             ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![now, (limit + skip.len()) as i64], |r| {
            Ok(Queued {
                id: r.get(0)?,
                receiver: r.get(1)?,
                kind: r.get(2)?,
                target: r.get(3)?,
                body: r.get(4)?,
                created_at: r.get(5)?,
                attempts: r.get(6)?,
            })
        })?;
        let mut out = Vec::new();
        for q in rows {
            let q = q?;
            if !skip.contains(&q.id) && out.len() < limit {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// Earliest next attempt of a pending notification (ms).
    pub fn next_due(&self) -> rusqlite::Result<Option<i64>> {
        self.conn()
            .query_row(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
    }

    /// Records a delivery.
    pub fn delivered(&self, id: i64, now: i64) -> rusqlite::Result<()> {
        self.conn().execute(
            "UPDATE outbox SET status = 'delivered', attempts = attempts + 1,
                last_attempt_at = ?2, delivered_at = ?2, last_error = '' WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    /// Records a failed attempt: retried at `next` or, when `next` is
    /// None, given up.
    pub fn attempt_failed(
        &self,
        id: i64,
        now: i64,
        next: Option<i64>,
        error: &str,
    ) -> rusqlite::Result<()> {
        let status = if next.is_some() { "pending" } else { "failed" };
        self.conn().execute(
            "UPDATE outbox SET status = ?2, attempts = attempts + 1, last_attempt_at = ?3,
                next_attempt_at = ?4, last_error = ?5 WHERE id = ?1",
            params![id, status, now, next.unwrap_or(now), error],
        )?;
        Ok(())
    }

    /// Pending notifications.
    pub fn pending_count(&self) -> rusqlite::Result<i64> {
        self.conn().query_row(
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )
    }

    /// Removes delivered and failed notifications queued before `before`.
    pub fn prune(&self, before: i64) -> rusqlite::Result<usize> {
        self.conn().execute(
            "DELETE FROM outbox WHERE status <> 'pending' AND created_at < ?1",
            params![before],
        )
    }

    /// The last notification of every (receiver, group key) of webhooks.
    pub fn last_sent(&self) -> rusqlite::Result<HashMap<(String, String), LastSent>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT receiver, group_key, firing_keys, resolved_keys, created_at FROM outbox
             WHERE id IN (SELECT MAX(id) FROM outbox WHERE kind = 'webhook'
                          GROUP BY receiver, group_key)",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                LastSent {
                    firing: parse_keys(&r.get::<_, String>(2)?),
                    resolved: parse_keys(&r.get::<_, String>(3)?),
                    at: r.get(4)?,
                },
            ))
        })?;
        rows.collect()
    }

    /// `/api/v1/notifications` rows, newest first.
    pub fn list(&self, limit: usize) -> rusqlite::Result<Vec<Json>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT id, receiver, group_key, status, firing, resolved, created_at, attempts,
                    last_attempt_at, next_attempt_at, delivered_at, last_error, target, kind
             FROM outbox ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit as i64], |r| {
            let status: String = r.get(3)?;
            let next: i64 = r.get(9)?;
            Ok(json!({
                "id": r.get::<_, i64>(0)?,
                "receiver": r.get::<_, String>(1)?,
                "group_key": r.get::<_, String>(2)?,
                "status": status,
                "firing": r.get::<_, i64>(4)?,
                "resolved": r.get::<_, i64>(5)?,
                "created_at": time(Some(r.get(6)?)),
                "attempts": r.get::<_, i64>(7)?,
                "last_attempt_at": time(r.get(8)?),
                "next_attempt_at": time((status == "pending").then_some(next)),
                "delivered_at": time(r.get(10)?),
                "last_error": r.get::<_, String>(11)?,
                "target": r.get::<_, String>(12)?,
                "kind": r.get::<_, String>(13)?,
            }))
        })?;
        rows.collect()
    }

    /// Saves a silence (new or changed).
    pub fn save_silence(&self, s: &Silence) -> rusqlite::Result<()> {
        let ms: Vec<Json> = s.matchers.iter().map(matcher_json).collect();
        self.conn().execute(
            "INSERT OR REPLACE INTO silences (id, matchers, starts_at, ends_at, created_by,
                comment, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                s.id,
                Json::Array(ms).to_string(),
                s.starts_at,
                s.ends_at,
                s.created_by,
                s.comment,
                s.updated_at
            ],
        )?;
        Ok(())
    }

    /// Every silence; a row that no longer parses is skipped with a warning.
    pub fn silences(&self) -> rusqlite::Result<Vec<Silence>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT id, matchers, starts_at, ends_at, created_by, comment, updated_at
             FROM silences ORDER BY starts_at",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, ms, starts_at, ends_at, created_by, comment, updated_at) = row?;
            let matchers: Result<Vec<Matcher>, String> = serde_json::from_str::<Vec<Json>>(&ms)
                .map_err(|e| e.to_string())
                .and_then(|v| v.iter().map(matcher_from_json).collect());
            match matchers {
                Ok(matchers) => out.push(Silence {
                    id,
                    matchers,
                    starts_at,
                    ends_at,
                    created_by,
                    comment,
                    updated_at,
                }),
                Err(e) => {
                    tracing::warn!(silence = %id, error = %e, "silence in {NOTIFY_DB_FILE} skipped")
                }
            }
        }
        Ok(out)
    }

    /// Removes silences that ended before `before`.
    pub fn prune_silences(&self, before: i64) -> rusqlite::Result<usize> {
        self.conn()
            .execute("DELETE FROM silences WHERE ends_at < ?1", params![before])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(group: &str, kind: &'static str) -> NewNotification {
        NewNotification {
            receiver: "r".into(),
            group_key: group.into(),
            kind,
            target: "http://x".into(),
            body: b"{}".to_vec(),
            firing: [1u64, 0xabc].into(),
            resolved: BTreeSet::new(),
        }
    }

    #[test]
    fn webhook_rows_of_one_group_go_in_order_and_failures_are_kept() {
        let s = NotifyStore::in_memory().unwrap();
        let ids = s
            .enqueue(
                &[n("g", "webhook"), n("g", "webhook"), n("h", "webhook")],
                1000,
            )
            .unwrap();
        let due: Vec<i64> = s
            .due(1000, &BTreeSet::new(), 10)
            .unwrap()
            .iter()
            .map(|q| q.id)
            .collect();
        assert_eq!(due, [ids[0], ids[2]]);
        s.attempt_failed(ids[0], 1000, Some(5000), "HTTP 500")
            .unwrap();
        assert!(
            s.due(1000, &BTreeSet::new(), 10)
                .unwrap()
                .iter()
                .all(|q| q.id != ids[1])
        );
        assert_eq!(s.next_due().unwrap(), Some(1000));
        s.delivered(ids[0], 5000).unwrap();
        let due: Vec<i64> = s
            .due(5000, &[ids[2]].into(), 10)
            .unwrap()
            .iter()
            .map(|q| q.id)
            .collect();
        assert_eq!(due, [ids[1]]);
        s.attempt_failed(ids[1], 6000, None, "too old").unwrap();
        let rows = s.list(10).unwrap();
        assert_eq!(rows[1]["status"], "failed");
        assert_eq!(rows[1]["last_error"], "too old");
        assert_eq!(rows[1]["attempts"], 1);
        assert_eq!(rows[2]["status"], "delivered");
        assert_eq!(rows[2]["attempts"], 2);
        assert_eq!(s.pending_count().unwrap(), 1);
        let last = s.last_sent().unwrap();
        assert_eq!(
            last[&("r".to_string(), "g".to_string())].firing,
            [1u64, 0xabc].into()
        );
    }
}
