//! A [`Querier`] over series held in memory, for the engine's tests: it
//! applies matchers and the time range exactly as the trait specifies and
//! records every selection so tests can check how storage was read.
//!
//! Test-only; it must never be used as storage.

use std::sync::Mutex;

use nines_shared::Labels;
use promql_parser::label::{Matcher, Matchers};

use super::querier::{Querier, QuerierError, SeriesSamples};

/// Series in memory, or a store that always fails.
pub(crate) struct InMemoryQuerier {
    series: Vec<SeriesSamples>,
    failure: Option<QuerierError>,
    /// The `[start, end]` of every select, in call order.
    windows: Mutex<Vec<(i64, i64)>>,
}

impl InMemoryQuerier {
    /// A store holding `series`.
    pub(crate) fn new(series: Vec<SeriesSamples>) -> Self {
        InMemoryQuerier {
            series,
            failure: None,
            windows: Mutex::new(Vec::new()),
        }
    }

    /// A store whose every select fails with (a copy of) `e`.
    pub(crate) fn failing(e: QuerierError) -> Self {
        InMemoryQuerier {
            series: Vec::new(),
            failure: Some(e),
            windows: Mutex::new(Vec::new()),
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
