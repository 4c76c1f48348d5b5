//! The native push protocol: a [`Batch`] encoded with postcard and
//! compressed with zstd, sent as an HTTP POST body with a version header.
//!
//! Decoding is bounded: the decompressed size is capped before anything is
//! parsed, and counts are checked against [`WireLimits`]. Every failure is a
//! [`DecodeError`]; no input makes this module panic.

use crate::model::{Batch, InvalidSeries, LabelLimits};
use std::collections::HashSet;
use std::io::Read;

/// The path an agent pushes to.
pub const PUSH_PATH: &str = "/api/v1/push";
/// Content type of a push body.
pub const CONTENT_TYPE: &str = "application/x-nines-batch";
/// Header that carries the wire version.
pub const VERSION_HEADER: &str = "x-nines-wire-version";
/// The wire version this build speaks.
pub const VERSION: u32 = 1;
/// Content encoding of a push body.
pub const CONTENT_ENCODING: &str = "zstd";
/// zstd level the agent uses: fast, and most of the gain.
const ZSTD_LEVEL: i32 = 3;

/// Bounds on what a decoder accepts.
#[derive(Debug, Clone)]
pub struct WireLimits {
    /// Most bytes the body may decompress to.
    pub max_decompressed_bytes: usize,
    /// Most series definitions per batch.
    pub max_definitions: usize,
    /// Most metadata entries per batch.
    pub max_metadata: usize,
    /// Most samples per batch, over all groups.
    pub max_samples: usize,
    /// Most sample groups per batch.
    pub max_groups: usize,
    /// Limits on each series' labels.
    pub labels: LabelLimits,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_decompressed_bytes: 16 << 20,
            max_definitions: 100_000,
            max_metadata: 10_000,
            max_samples: 500_000,
            max_groups: 10_000,
            labels: LabelLimits::default(),
        }
    }
}

/// Why a push body could not be decoded. Each variant maps to one reject
/// reason the collector counts.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not a zstd frame.
    #[error("body is not valid zstd: {0}")]
    Compression(String),
    /// The body decompresses to more than the cap.
    #[error("body decompresses to more than {max} bytes")]
    TooLarge {
        /// The cap that was hit.
        max: usize,
    },
    /// The decompressed bytes are not a postcard batch.
    #[error("body is not a valid batch: {0}")]
    Format(String),
    /// Bytes left over after the batch.
    #[error("body has {0} trailing bytes after the batch")]
    Trailing(usize),
    /// A count over its limit.
    #[error("batch has {count} {what}, more than the limit of {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many there were.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A series definition is not valid.
    #[error("invalid series: {0}")]
    Series(#[from] InvalidSeries),
    /// Two definitions with the same ref.
    #[error("series ref {0} is defined twice in the batch")]
    DuplicateRef(u32),
    /// The agent id is empty or too long.
    #[error("stream agent id must be 1 to 256 bytes")]
    AgentId,
}

impl DecodeError {
    /// A short, stable word for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Compression(_) => "compression",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Format(_) | DecodeError::Trailing(_) => "format",
            DecodeError::TooMany { .. } => "too_many",
            DecodeError::Series(_) | DecodeError::DuplicateRef(_) => "invalid_series",
            DecodeError::AgentId => "invalid_stream",
        }
    }
}

/// Serialises and compresses a batch.
pub fn encode(batch: &Batch) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail; compression into memory
    // neither. Both errors would be bugs, not input problems.
    let raw = postcard::to_stdvec(batch).expect("postcard serialisation of a Batch");
    zstd::bulk::compress(&raw, ZSTD_LEVEL).expect("zstd compression into memory")
}

/// Decompresses (bounded), decodes and checks a batch.
pub fn decode(body: &[u8], limits: &WireLimits) -> Result<Batch, DecodeError> {
    let raw = decompress_bounded(body, limits.max_decompressed_bytes)?;
    let (batch, rest): (Batch, &[u8]) =
        postcard::take_from_bytes(&raw).map_err(|e| DecodeError::Format(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    check(&batch, limits)?;
    Ok(batch)
}

/// zstd decompression that stops at `max` bytes: a bomb costs at most `max`.
pub fn decompress_bounded(body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let decoder = zstd::stream::read::Decoder::new(body)
        .map_err(|e| DecodeError::Compression(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Compression(e.to_string()))?;
    if out.len() > max {
        return Err(DecodeError::TooLarge { max });
    }
    Ok(out)
}

fn check(batch: &Batch, limits: &WireLimits) -> Result<(), DecodeError> {
    if batch.stream.agent.is_empty() || batch.stream.agent.len() > 256 {
        return Err(DecodeError::AgentId);
    }
    let too_many = |what, count: usize, max: usize| {
        if count > max {
            Err(DecodeError::TooMany { what, count, max })
        } else {
            Ok(())
        }
    };
    too_many(
        "series definitions",
        batch.definitions.len(),
        limits.max_definitions,
    )?;
    too_many(
        "metadata entries",
        batch.metadata.len(),
        limits.max_metadata,
    )?;
    too_many("sample groups", batch.groups.len(), limits.max_groups)?;
    too_many("samples", batch.sample_count(), limits.max_samples)?;
    let mut seen = HashSet::with_capacity(batch.definitions.len());
    for d in &batch.definitions {
        if !seen.insert(d.series.0) {
            return Err(DecodeError::DuplicateRef(d.series.0));
        }
        d.labels.validate(&limits.labels)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use proptest::prelude::*;

    fn sample_batch() -> Batch {
        Batch {
            stream: StreamId {
                agent: "host-a".into(),
                epoch: UnixMillis(1_700_000_000_000),
            },
            seq: Seq(7),
            sent_at: UnixMillis(1_700_000_001_000),
            definitions: vec![SeriesDefinition {
                series: SeriesRef(0),
                labels: Labels::new("node_load1", [("instance", "a"), ("job", "node")]),
            }],
            metadata: vec![MetricMetadata {
                name: "node_load1".into(),
                kind: MetricKind::Gauge,
                help: "1m load average.".into(),
                unit: String::new(),
            }],
            groups: vec![SampleGroup {
                at: UnixMillis(1_700_000_000_500),
                values: vec![(SeriesRef(0), 0.25)],
            }],
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let b = sample_batch();
        let back = decode(&encode(&b), &WireLimits::default()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn a_zstd_bomb_stops_at_the_cap() {
        let zeros = vec![0u8; 64 << 20];
        let bomb = zstd::bulk::compress(&zeros, 19).unwrap();
        assert!(bomb.len() < 64 << 10);
        let limits = WireLimits {
            max_decompressed_bytes: 1 << 20,
            ..WireLimits::default()
        };
        assert!(matches!(
            decode(&bomb, &limits),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn counts_over_the_limit_are_rejected() {
        let mut b = sample_batch();
        b.groups[0].values = vec![(SeriesRef(0), 1.0); 11];
        let limits = WireLimits {
            max_samples: 10,
            ..WireLimits::default()
        };
        assert!(matches!(
            decode(&encode(&b), &limits),
            Err(DecodeError::TooMany {
                what: "samples",
                ..
            })
        ));
    }

    #[test]
    fn invalid_labels_and_duplicate_refs_are_rejected() {
        let mut b = sample_batch();
        b.definitions.push(b.definitions[0].clone());
        assert!(matches!(
            decode(&encode(&b), &WireLimits::default()),
            Err(DecodeError::DuplicateRef(0))
        ));
        let mut b = sample_batch();
        b.definitions[0].labels = Labels::new("bad name", [("a", "b")]);
        assert!(matches!(
            decode(&encode(&b), &WireLimits::default()),
            Err(DecodeError::Series(InvalidSeries::MetricName(_)))
        ));
    }

    fn arb_labels() -> impl Strategy<Value = Labels> {
        (
            "[a-z_:][a-z0-9_:]{0,20}",
            proptest::collection::btree_map("[a-z][a-z0-9_]{0,10}", ".{1,30}", 0..6),
        )
            .prop_map(|(name, pairs)| Labels::new(&name, pairs))
    }

    fn arb_batch() -> impl Strategy<Value = Batch> {
        (
            ".{1,40}",
            any::<i64>(),
            any::<u64>(),
            any::<i64>(),
            proptest::collection::vec(arb_labels(), 0..8),
            proptest::collection::vec(
                (
                    any::<i64>(),
                    proptest::collection::vec((any::<u32>(), any::<f64>()), 0..20),
                ),
                0..5,
            ),
        )
            .prop_map(|(agent, epoch, seq, sent, labels, groups)| Batch {
                stream: StreamId {
                    agent,
                    epoch: UnixMillis(epoch),
                },
                seq: Seq(seq),
                sent_at: UnixMillis(sent),
                definitions: labels
                    .into_iter()
                    .enumerate()
                    .map(|(i, labels)| SeriesDefinition {
                        series: SeriesRef(i as u32),
                        labels,
                    })
                    .collect(),
                metadata: vec![],
                groups: groups
                    .into_iter()
                    .map(|(at, values)| SampleGroup {
                        at: UnixMillis(at),
                        values: values.into_iter().map(|(r, v)| (SeriesRef(r), v)).collect(),
                    })
                    .collect(),
            })
    }

    fn same_bits(a: &Batch, b: &Batch) -> bool {
        // NaN != NaN, so compare value bits.
        let bits = |x: &Batch| {
            x.groups
                .iter()
                .flat_map(|g| g.values.iter().map(move |(r, v)| (g.at, *r, v.to_bits())))
                .collect::<Vec<_>>()
        };
        a.stream == b.stream
            && a.seq == b.seq
            && a.sent_at == b.sent_at
            && a.definitions == b.definitions
            && bits(a) == bits(b)
    }

    proptest! {
        #[test]
        fn any_valid_batch_round_trips(b in arb_batch()) {
            let back = decode(&encode(&b), &WireLimits::default()).unwrap();
            prop_assert!(same_bits(&b, &back));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes, &WireLimits::default());
        }

        #[test]
        fn random_postcard_inside_zstd_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let body = zstd::bulk::compress(&bytes, 1).unwrap();
            let _ = decode(&body, &WireLimits::default());
        }

        #[test]
        fn truncated_bodies_are_errors_not_panics(b in arb_batch(), cut in 0usize..10_000) {
            let body = encode(&b);
            let cut = cut % body.len().max(1);
            prop_assert!(decode(&body[..cut], &WireLimits::default()).is_err());
            // Truncating inside the compressed frame after decompression:
            let raw = postcard::to_stdvec(&b).unwrap();
            let cut = cut % raw.len().max(1);
            let body = zstd::bulk::compress(&raw[..cut], 1).unwrap();
            prop_assert!(decode(&body, &WireLimits::default()).is_err());
        }
    }
}
