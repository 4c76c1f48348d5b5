//! The head: per series, the samples that are not in chunks yet, in memory.
//! Every one of them is also in a committed `ingest_log` row (or, after a
//! compaction left them behind, in the row that re-logged them), so the
//! head is rebuilt at open by replaying the log.
//!
//! Per series the head holds an open chunk encoder for samples that arrive
//! in time order (about two bytes a sample) and a small sorted buffer for
//! the rest: samples at or before the encoder's last timestamp (late, out
//! of order, or replacing a value). The buffer wins over the encoder at a
//! shared timestamp, and a write to a timestamp the buffer holds replaces
//! it: whatever is in the buffer was written after the encoder's sample.
//!
//! Only the writer thread changes the head, and only after the commit that
//! made the change durable. Readers copy what they need under a short read
//! lock; they never hold it across SQLite work.

use super::chunk::ChunkEncoder;
use super::index::{SeriesId, SeriesMap};
use super::read::Run;
use std::sync::RwLock;

/// One series' head.
#[derive(Default)]
pub struct SeriesHead {
    enc: ChunkEncoder,
    /// Sorted by timestamp, one per timestamp: (ts, value bits).
    ooo: Vec<(i64, u64)>,
    /// The oldest ingest log row holding a sample that is only here.
    pub log_from: i64,
}

impl SeriesHead {
    /// Adds a sample; a timestamp held already gets the new value.
    pub fn push(&mut self, ts: i64, bits: u64) {
        if self.enc.last_ts().is_none_or(|last| ts > last)
            && self.enc.push(ts, f64::from_bits(bits)).is_ok()
        {
            return;
        }
        match self.ooo.binary_search_by_key(&ts, |s| s.0) {
            Ok(i) => self.ooo[i].1 = bits,
            Err(i) => self.ooo.insert(i, (ts, bits)),
        }
    }

    /// Samples held (a timestamp in both parts counts twice).
    pub fn len(&self) -> usize {
        self.enc.len() + self.ooo.len()
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples in `[start, end]`, ascending, one per timestamp.
    pub fn run(&self, start: i64, end: i64) -> Run {
        let mut base = Vec::new();
        // The encoder only ever holds what push gave it: it decodes.
        if self.enc.decode_range_into(start, end, &mut base).is_err() {
            base.clear();
        }
        let lo = self.ooo.partition_point(|s| s.0 < start);
        let hi = self.ooo.partition_point(|s| s.0 <= end);
        let extra: Run = self.ooo[lo..hi]
            .iter()
            .map(|&(t, b)| (t, f64::from_bits(b)))
            .collect();
        super::read::merge_two(base, extra)
    }

    /// Smallest and largest timestamp held.
    pub fn span(&self) -> Option<(i64, i64)> {
        let enc = self.enc.first_ts().zip(self.enc.last_ts());
        let ooo = self
            .ooo
            .first()
            .zip(self.ooo.last())
            .map(|(a, b)| (a.0, b.0));
        match (enc, ooo) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        }
    }

    /// A head holding `samples` (ascending, one per timestamp).
    pub fn from_run(samples: &[(i64, f64)], log_from: i64) -> SeriesHead {
        let mut h = SeriesHead {
            log_from,
            ..SeriesHead::default()
        };
        for &(t, v) in samples {
            h.push(t, v.to_bits());
        }
        h.enc.shrink();
        h
    }

    /// Drops samples before `cutoff`; returns how many.
    pub fn expire(&mut self, cutoff: i64) -> usize {
        let Some((first, _)) = self.span() else {
            return 0;
        };
        if first >= cutoff {
            return 0;
        }
        let before = self.run(i64::MIN, i64::MAX);
        let kept: Vec<(i64, f64)> = before.iter().copied().filter(|s| s.0 >= cutoff).collect();
        let gone = before.len() - kept.len();
        *self = SeriesHead::from_run(&kept, self.log_from);
        gone
    }
}

/// Every series' head, shared by the writer (changes) and readers (copies).
#[derive(Default)]
pub struct Head {
    series: RwLock<SeriesMap<SeriesHead>>,
}

impl Head {
    /// Samples of a series in `[start, end]`, ascending.
    pub fn run(&self, id: SeriesId, start: i64, end: i64) -> Run {
        self.read()
            .get(&id)
            .map(|h| h.run(start, end))
            .unwrap_or_default()
    }

    /// True when the series has a head sample in `[start, end]`.
    pub fn has_data(&self, id: SeriesId, start: i64, end: i64) -> bool {
        self.read().get(&id).is_some_and(|h| {
            h.span().is_some_and(|(a, b)| a <= end && b >= start) && !h.run(start, end).is_empty()
        })
    }

    /// Samples held for a series (one per timestamp).
    pub fn count(&self, id: SeriesId) -> usize {
        self.run(id, i64::MIN, i64::MAX).len()
    }

    /// Read access.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, SeriesMap<SeriesHead>> {
        self.series.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access (the writer thread only, after a commit).
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, SeriesMap<SeriesHead>> {
        self.series.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #[test]
        fn the_head_answers_the_last_write_at_each_timestamp(
            writes in prop::collection::vec((0i64..300, any::<u64>()), 0..300),
            a in 0i64..300,
            len in 0i64..300,
            cutoff in 0i64..300,
        ) {
            let mut h = SeriesHead::default();
            let mut m = BTreeMap::new();
            for &(t, b) in &writes {
                h.push(t, b);
                m.insert(t, b);
            }
            let got: Vec<(i64, u64)> = h.run(a, a + len).iter().map(|&(t, v)| (t, v.to_bits())).collect();
            let want: Vec<(i64, u64)> = m.range(a..=a + len).map(|(t, b)| (*t, *b)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(h.span(), m.keys().next().zip(m.keys().last()).map(|(x, y)| (*x, *y)));
            let gone = h.expire(cutoff);
            prop_assert_eq!(gone, m.range(..cutoff).count());
            let got: Vec<(i64, u64)> = h.run(i64::MIN, i64::MAX).iter().map(|&(t, v)| (t, v.to_bits())).collect();
            let want: Vec<(i64, u64)> = m.range(cutoff..).map(|(t, b)| (*t, *b)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
