//! A [`Querier`] over series held in memory, for the engine's tests: it
//! applies matchers and the time range exactly as the trait specifies and
//! records every selection (of samples and of buckets) so tests can check
//! how storage was read. It can act as a store whose raw samples before
//! some time are gone while its rollups (folded from all samples) remain.
//!
//! Test-only; it must never be used as storage.

use std::sync::Mutex;

use nines_shared::Labels;
use promql_parser::label::{Matcher, Matchers};

use super::querier::{Querier, QuerierError, SeriesSamples, fold_selected};
use super::rollup::SeriesBuckets;

/// Series in memory, or a store that always fails.
pub(crate) struct InMemoryQuerier {
    series: Vec<SeriesSamples>,
    failure: Option<QuerierError>,
    /// The `[start, end]` of every select, in call order.
    windows: Mutex<Vec<(i64, i64)>>,
    /// The `[start, end]` and resolution of every select of buckets.
    bucket_windows: Mutex<Vec<(i64, i64, i64)>>,
    /// Raw samples before this are gone (rollups keep them).
    raw_from: Option<i64>,
    /// Whether it claims to keep rollups (of every resolution the engine
    /// knows), as storage does.
    rollups: bool,
}

impl InMemoryQuerier {
    /// A store holding `series`.
    pub(crate) fn new(series: Vec<SeriesSamples>) -> Self {
        InMemoryQuerier {
            series,
            failure: None,
            windows: Mutex::new(Vec::new()),
            bucket_windows: Mutex::new(Vec::new()),
            raw_from: None,
            rollups: false,
        }
    }

    /// The same store claiming to keep 1 m and 1 h rollups (still folded
    /// from its samples), so the engine reads them where its rule says.
    pub(crate) fn keeping_rollups(mut self) -> Self {
        self.rollups = true;
        self
    }

    /// The same store with its raw samples before `from` gone, as after
    /// raw retention ran; rollups are still made of every sample.
    pub(crate) fn raw_kept_from(mut self, from: i64) -> Self {
        self.raw_from = Some(from);
        self
    }

    /// The `[start, end]` and resolution of every select of buckets made,
    /// in order.
    pub(crate) fn bucket_windows(&self) -> Vec<(i64, i64, i64)> {
        self.bucket_windows
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }

    /// A store whose every select fails with (a copy of) `e`.
    pub(crate) fn failing(e: QuerierError) -> Self {
        InMemoryQuerier {
            failure: Some(e),
            ..InMemoryQuerier::new(Vec::new())
        }
    }

    /// How many selects were made.
    pub(crate) fn selects(&self) -> usize {
        self.windows().len()
    }

    /// The `[start, end]` of every select made, in order.
    pub(crate) fn windows(&self) -> Vec<(i64, i64)> {
        self.windows.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

fn group_matches(group: &[Matcher], labels: &Labels) -> bool {
    group
        .iter()
        .all(|m| m.is_match(labels.get(&m.name).unwrap_or("")))
}

fn selects(matchers: &Matchers, labels: &Labels) -> bool {
    if matchers.or_matchers.is_empty() {
        group_matches(&matchers.matchers, labels)
    } else {
        matchers
            .or_matchers
            .iter()
            .any(|g| group_matches(g, labels))
    }
}

impl InMemoryQuerier {
    /// The matching series' samples in `[start, end]`, or the store's failure.
    fn matching(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QuerierError> {
        if let Some(e) = &self.failure {
            return Err(match e {
                QuerierError::Storage(m) => QuerierError::Storage(m.clone()),
                QuerierError::TooManySeries(n) => QuerierError::TooManySeries(*n),
                QuerierError::TooManySamples(n) => QuerierError::TooManySamples(*n),
            });
        }
        Ok(self
            .series
            .iter()
            .filter(|s| selects(matchers, &s.labels))
            .map(|s| SeriesSamples {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .copied()
                    .filter(|&(t, _)| start <= t && t <= end)
                    .collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect())
    }
}

impl Querier for InMemoryQuerier {
    fn select(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QuerierError> {
        if let Ok(mut w) = self.windows.lock() {
            w.push((start, end));
        }
        self.matching(matchers, start.max(self.raw_from.unwrap_or(i64::MIN)), end)
    }

    fn select_buckets(
        &self,
        matchers: &Matchers,
        start: i64,
        end: i64,
        res: i64,
    ) -> Result<Vec<SeriesBuckets>, QuerierError> {
        if let Ok(mut w) = self.bucket_windows.lock() {
            w.push((start, end, res));
        }
        fold_selected(start, end, res, |from, to| {
            self.matching(matchers, from, to)
        })
    }

    fn raw_retention_start(&self) -> Option<i64> {
        self.raw_from
    }

    fn rollup_resolutions(&self) -> Vec<i64> {
        if self.rollups {
            super::RESOLUTIONS.to_vec()
        } else {
            Vec::new()
        }
    }
}
