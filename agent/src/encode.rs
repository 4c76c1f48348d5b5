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
use std::sync::Mutex;
use zstd::zstd_safe::{CCtx, CParameter};

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

/// Largest zstd window (as a power of two) of what the agent writes:
/// 32 KiB. A compression context's buffers grow with its block size,
/// which is the window up to 128 KiB: at level 1, the agent's spool
/// records (about 200 KB of series definitions and values a round) made
/// contexts of 577 KiB; with this window one takes about 190 KiB. Bodies
/// come out no bigger (label text repeats within a few hundred bytes;
/// level 1's hash table, not the window, bounds what it finds), and
/// decoders need less memory for them too.
const WINDOW_LOG: u32 = 15;

/// The process's kept compression context, shared by everything that
/// writes bodies (the batcher's spool records, every lane's pushes), so
/// its tables are set up once and held once.
static CONTEXT: Mutex<Option<CCtx<'static>>> = Mutex::new(None);

/// A context at [`LEVEL`] and [`WINDOW_LOG`]; `None` if zstd cannot
/// allocate one.
fn new_context() -> Option<CCtx<'static>> {
    let mut c = CCtx::try_create()?;
    c.set_parameter(CParameter::CompressionLevel(LEVEL)).ok()?;
    c.set_parameter(CParameter::WindowLog(WINDOW_LOG)).ok()?;
    Some(c)
}

/// `raw` compressed into one zstd frame, in a buffer of its own size.
///
/// Uses the shared context; a caller that finds it busy (another thread
/// compressing right now, which is rare: a round's spool record and its
/// push follow each other) uses a context of its own for this one body
/// rather than wait, so the runtime's thread never blocks on a spool
/// write's compression.
pub(crate) fn compress(raw: &[u8]) -> Vec<u8> {
    // A buffer of the bound (a little more than the input), cut to size
    // after: buffers of 64 KiB and more have pages of their own (see
    // `footprint::one_heap`), so the part never written is never resident
    // and the cut gives it back.
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
    let mut own: Option<CCtx<'static>>;
    let mut shared = match CONTEXT.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    let context = match shared.as_deref_mut() {
        Some(slot) => {
            if slot.is_none() {
                *slot = new_context();
            }
            slot.as_mut()
        }
        None => {
            own = new_context();
            own.as_mut()
        }
    };
    // Compressing into a buffer of the bound only fails if a context
    // cannot be allocated; then zstd's one-shot call is the last resort.
    let done = context.is_some_and(|c| c.compress2(&mut out, raw).is_ok());
    drop(shared);
    if !done {
        out = zstd::bulk::compress(raw, LEVEL).expect("zstd compression into memory");
    }
    out.shrink_to_fit();
    out
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
        let sent = compress(&raw);
        let decoded = wire::decode(&sent, &WireLimits::default()).unwrap();
        assert_eq!(decoded.definitions, expected.definitions);
        assert_eq!(decoded.groups[0], expected.groups[0]);
        assert!(decoded.groups[1].values[0].1.is_nan());
    }

    #[test]
    fn bodies_use_a_small_window_and_the_kept_context_stays_small() {
        // A spool record's size: 200 KB of series definitions.
        let b = Batch {
            definitions: (0..2500)
                .map(|i| SeriesDefinition {
                    series: SeriesRef(i),
                    labels: Labels::new(
                        "node_filesystem_avail_bytes",
                        [
                            ("device", format!("/dev/sd{i}")),
                            ("mountpoint", format!("/m/{i}")),
                        ],
                    ),
                })
                .collect(),
            ..batch()
        };
        let raw = postcard::to_stdvec(&b).unwrap();
        assert!(raw.len() > 150_000, "{}", raw.len());
        let body = compress(&raw);
        assert_eq!(body.capacity(), body.len());
        // A decoder allowed only a 32 KiB window reads it.
        let mut d = zstd::zstd_safe::DCtx::create();
        d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(WINDOW_LOG))
            .unwrap();
        let mut out = Vec::with_capacity(raw.len());
        d.decompress(&mut out, &body).unwrap();
        assert_eq!(out, raw);
        let kept = CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
        let size = kept.as_ref().map_or(0, |c| c.sizeof());
        assert!(size > 0 && size < 256 * 1024, "context of {size} bytes");
    }

    #[test]
    fn a_body_that_does_not_shrink_is_still_compressed_whole() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let raw: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let body = compress(&raw);
        assert!(body.len() > raw.len() / 2);
        assert_eq!(zstd::bulk::decompress(&body, raw.len()).unwrap(), raw);
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
