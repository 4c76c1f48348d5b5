//! Why a query failed, and how the Prometheus HTTP API reports each reason
//! (`errorType` and HTTP status), so the API layer never has to guess.
//!
//! Messages that Prometheus clients (Grafana, promtool) may show or match
//! are Prometheus's own wording. Nothing here evaluates or does I/O.

use super::querier::QuerierError;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The expression does not parse (or is not valid PromQL); the message
    /// is the parser's.
    #[error("{0}")]
    Parse(String),
    /// The expression is valid PromQL that this engine cannot evaluate yet;
    /// the message names the construct, e.g. `function rate() is not
    /// supported yet`.
    #[error("{0}")]
    Unsupported(String),
    /// A range query whose expression is not a scalar or an instant vector.
    #[error(
        "invalid expression type \"{found}\" for range query, must be Scalar or instant Vector"
    )]
    RangeQueryType {
        /// PromQL's name for the type found: `range vector` or `string`.
        found: &'static str,
    },
    /// A range query whose end lies before its start.
    #[error("end timestamp must not be before start time")]
    EndBeforeStart,
    /// A range query whose step is zero or negative.
    #[error(
        "zero or negative query resolution step widths are not accepted. Try a positive integer"
    )]
    NonPositiveStep,
    /// A range query with more steps than Prometheus allows per series.
    #[error(
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    )]
    TooManyPoints,
    /// An operation produced two elements with the same label set in one
    /// instant vector (e.g. `-x` over series differing only by name).
    #[error("vector cannot contain metrics with the same labelset")]
    DuplicateLabelSet,
    /// Vector matching found two series with the same match group on the
    /// side that must be unique.
    #[error(
        "found duplicate series for the match group {group} on the {side} hand-side of the operation: [{first}, {second}];many-to-many matching not allowed: matching labels must be unique on one side"
    )]
    ManyToManyMatching {
        /// The match group's labels, as Prometheus prints a label set.
        group: String,
        /// `left` or `right`: the side that should have been the "one".
        side: &'static str,
        /// The later of the two series.
        first: String,
        /// The earlier of the two series.
        second: String,
    },
    /// One-to-one matching paired two left-hand elements with one
    /// right-hand element.
    #[error(
        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
    )]
    AmbiguousOneToOne,
    /// Many-to-one matching produced the same result labels twice.
    #[error("multiple matches for labels: grouping labels must ensure unique matches")]
    AmbiguousGrouping,
    /// A function or aggregation argument Prometheus refuses while
    /// evaluating (a bad regex, label name or parameter); the message is
    /// Prometheus's.
    #[error("{0}")]
    InvalidArgument(String),
    /// The query would hold more samples than the engine's limit.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The store could not answer.
    #[error(transparent)]
    Storage(#[from] QuerierError),
}

impl QueryError {
    /// The Prometheus API `errorType`: `bad_data` for a query or parameter
    /// the client must fix, `execution` for a valid query that failed while
    /// running (including limits), `internal` for a storage failure.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::Parse(_)
            | QueryError::RangeQueryType { .. }
            | QueryError::EndBeforeStart
            | QueryError::NonPositiveStep
            | QueryError::TooManyPoints => "bad_data",
            QueryError::Unsupported(_)
            | QueryError::DuplicateLabelSet
            | QueryError::ManyToManyMatching { .. }
            | QueryError::AmbiguousOneToOne
            | QueryError::AmbiguousGrouping
            | QueryError::InvalidArgument(_)
            | QueryError::TooManySamples { .. } => "execution",
            QueryError::Storage(e) => match e {
                QuerierError::Storage(_) => "internal",
                QuerierError::TooManySeries(_) | QuerierError::TooManySamples(_) => "execution",
            },
        }
    }

    /// The HTTP status Prometheus sends with [`Self::error_type`]:
    /// 400, 422 or 500.
    pub fn http_status(&self) -> u16 {
        match self.error_type() {
            "bad_data" => 400,
            "execution" => 422,
            _ => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_prometheus_error_type_and_status() {
        let cases: Vec<(QueryError, &str, u16)> = vec![
            (QueryError::Parse("x".into()), "bad_data", 400),
            (
                QueryError::RangeQueryType {
                    found: "range vector",
                },
                "bad_data",
                400,
            ),
            (QueryError::EndBeforeStart, "bad_data", 400),
            (QueryError::NonPositiveStep, "bad_data", 400),
            (QueryError::TooManyPoints, "bad_data", 400),
            (QueryError::Unsupported("x".into()), "execution", 422),
            (QueryError::DuplicateLabelSet, "execution", 422),
            (QueryError::AmbiguousOneToOne, "execution", 422),
            (QueryError::AmbiguousGrouping, "execution", 422),
            (QueryError::InvalidArgument("x".into()), "execution", 422),
            (
                QueryError::ManyToManyMatching {
                    group: "{}".into(),
                    side: "right",
                    first: "{}".into(),
                    second: "{}".into(),
                },
                "execution",
                422,
            ),
            (QueryError::TooManySamples { limit: 1 }, "execution", 422),
            (
                QueryError::Storage(QuerierError::Storage("disk".into())),
                "internal",
                500,
            ),
            (
                QueryError::Storage(QuerierError::TooManySeries(10)),
                "execution",
                422,
            ),
            (
                QueryError::Storage(QuerierError::TooManySamples(10)),
                "execution",
                422,
            ),
        ];
        for (e, ty, status) in cases {
            assert_eq!(e.error_type(), ty, "{e}");
            assert_eq!(e.http_status(), status, "{e}");
        }
    }

    #[test]
    fn messages_are_prometheus_wording() {
        assert_eq!(
            QueryError::RangeQueryType {
                found: "range vector"
            }
            .to_string(),
            "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"
        );
        assert_eq!(
            QueryError::TooManyPoints.to_string(),
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
        );
        assert_eq!(
            QueryError::Storage(QuerierError::Storage("disk full".into())).to_string(),
            "storage: disk full"
        );
    }
}
