//! Batches in the wire format, written piece by piece. The format
//! ([`nines_shared::wire`]) is postcard compressed with zstd, and postcard
//! lays a struct out as its fields back to back and a sequence as its
//! length (a varint) followed by its items. So a body can be put together
//! from parts encoded once and kept (a series definition never changes
//! within a stream) instead of building, cloning and encoding a whole
//! [`Batch`] for every push or spool record. What it writes decodes with
//! `wire::decode` to the batch it stands for (tested against
//! `wire::encode`).
//!
//! It never decides what a body holds: callers choose the definitions and
//! metadata.

use nines_shared::{Batch, SampleGroup, UnixMillis};
use serde::Serialize;

/// zstd level of what the agent writes: bodies are small and mostly
/// numbers or repeated label text, where level 1 keeps nearly all of
/// level 3's gain at a fraction of its time.
const LEVEL: i32 = 1;

/// Appends the postcard encoding of `value` to `out`.
pub(crate) fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serialising plain data into a Vec cannot fail.
    let buf = std::mem::take(out);
    *out = postcard::to_extend(value, buf).expect("postcard serialisation into memory");
}

/// Appends `n` as postcard writes a sequence's length.
pub(crate) fn put_len(out: &mut Vec<u8>, n: usize) {
    let mut n = n as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One body being written: the stream, sequence number and `sent_at`
/// first, then definitions, metadata and sample groups, in that order.
pub(crate) struct Body {
    raw: Vec<u8>,
}

impl Body {
    /// Starts the body of `batch`, sent at `sent_at`, reusing `raw`'s
    /// allocation.
    pub(crate) fn start(mut raw: Vec<u8>, batch: &Batch, sent_at: UnixMillis) -> Body {
        raw.clear();
        put(&mut raw, &batch.stream);
        put(&mut raw, &batch.seq);
        put(&mut raw, &sent_at);
        Body { raw }
    }

    /// The count of the sequence that follows (definitions, then
    /// metadata).
    pub(crate) fn count(&mut self, n: usize) {
        put_len(&mut self.raw, n);
    }

    /// One item already in the wire format.
    pub(crate) fn encoded(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// One item to encode.
    pub(crate) fn item<T: Serialize + ?Sized>(&mut self, value: &T) {
        put(&mut self.raw, value);
    }

    /// Ends with the sample groups; the uncompressed body.
    pub(crate) fn finish(mut self, groups: &[SampleGroup]) -> Vec<u8> {
        put(&mut self.raw, groups);
        self.raw
    }
}

/// A zstd compressor kept between bodies, so its tables are not set up
/// again for each one.
pub(crate) struct Compressor(Option<zstd::bulk::Compressor<'static>>);

impl Compressor {
    pub(crate) fn new() -> Self {
        Compressor(zstd::bulk::Compressor::new(LEVEL).ok())
    }

    /// `raw` compressed into one zstd frame.
    pub(crate) fn compress(&mut self, raw: &[u8]) -> Vec<u8> {
        if let Some(c) = &mut self.0 {
            if let Ok(out) = c.compress(raw) {
                return out;
            }
        }
        // Compressing into memory only fails if a context cannot be
        // allocated; a fresh one is tried each time.
        zstd::bulk::compress(raw, LEVEL).expect("zstd compression into memory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_shared::wire::{self, WireLimits};
    use nines_shared::{
        Labels, MetricKind, MetricMetadata, Seq, SeriesDefinition, SeriesRef, StreamId,
    };

    fn batch() -> Batch {
        Batch {
            stream: StreamId {
                agent: "agent-ü".into(),
                epoch: UnixMillis(1_700_000_000_000),
            },
            seq: Seq(300),
            sent_at: UnixMillis(1_700_000_000_500),
            definitions: (0..200)
                .map(|i| SeriesDefinition {
                    series: SeriesRef(i * 1000),
                    labels: Labels::new("m", [("i", i.to_string())]),
                })
                .collect(),
            metadata: vec![MetricMetadata {
                name: "m".into(),
                kind: MetricKind::Histogram,
                help: "Help.".into(),
                unit: "seconds".into(),
            }],
            groups: vec![
                SampleGroup {
                    at: UnixMillis(-5),
                    values: (0..200).map(|i| (SeriesRef(i * 1000), i as f64)).collect(),
                },
                SampleGroup {
                    at: UnixMillis(1),
                    values: vec![(SeriesRef(7), f64::NAN)],
                },
            ],
        }
    }

    #[test]
    fn a_body_written_in_pieces_is_the_batch_wire_encode_writes() {
        let b = batch();
        let mut body = Body::start(Vec::new(), &b, UnixMillis(42));
        body.count(b.definitions.len());
        for d in &b.definitions {
            let mut one = Vec::new();
            put(&mut one, d);
            body.encoded(&one);
        }
        body.count(b.metadata.len());
        for m in &b.metadata {
            body.item(m);
        }
        let raw = body.finish(&b.groups);
        let expected = Batch {
            sent_at: UnixMillis(42),
            ..b.clone()
        };
        assert_eq!(raw, postcard::to_stdvec(&expected).unwrap());
        let sent = Compressor::new().compress(&raw);
        let decoded = wire::decode(&sent, &WireLimits::default()).unwrap();
        assert_eq!(decoded.definitions, expected.definitions);
        assert_eq!(decoded.groups[0], expected.groups[0]);
        assert!(decoded.groups[1].values[0].1.is_nan());
    }

    #[test]
    fn lengths_are_postcard_varints() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, 1 << 40] {
            let mut mine = Vec::new();
            put_len(&mut mine, n);
            assert_eq!(mine, postcard::to_stdvec(&(n as u64)).unwrap(), "{n}");
        }
    }
}
