//! Prometheus remote_write 1.0 decoding: a snappy *block* (not framed)
//! holding a protobuf `WriteRequest`. Decoded by hand (the message is
//! small: timeseries, labels, samples, metadata), bounded in size and
//! count, into series with their samples. Nothing here writes or speaks HTTP.
//!
//! Field numbers (prometheus/prompb): WriteRequest{timeseries=1,
//! metadata=3}; TimeSeries{labels=1, samples=2, exemplars=3, histograms=4};
//! Label{name=1, value=2}; Sample{value=1 double, timestamp=2 int64};
//! MetricMetadata{type=1, metric_family_name=2, help=4, unit=5}.

pub use crate::storage::SeriesWrite;
use crate::storage::index::{PairsLookup, pairs_hash};
use crate::storage::{KeyedWrite, SeriesKey};
use nines_shared::{InvalidSeries, Label, LabelLimits, Labels, MetricKind, MetricMetadata};

/// A decoded write request.
#[derive(Debug, Default)]
pub struct WriteRequest {
    /// Series with samples.
    pub series: Vec<SeriesWrite>,
    /// Family metadata, if the sender included it.
    pub metadata: Vec<MetricMetadata>,
}

impl WriteRequest {
    /// Total samples.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }
}

/// Bounds on a write request.
#[derive(Debug, Clone)]
pub struct RemoteWriteLimits {
    /// Most bytes the snappy block may expand to.
    pub max_decompressed_bytes: usize,
    /// Most samples per request.
    pub max_samples: usize,
    /// Most series per request.
    pub max_series: usize,
    /// Label limits per series.
    pub labels: LabelLimits,
}

/// Why a write request is refused.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    /// Not a snappy block.
    #[error("body is not a valid snappy block: {0}")]
    Snappy(String),
    /// Expands beyond the cap.
    #[error("body decompresses to {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Declared decompressed size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// Not a valid protobuf WriteRequest.
    #[error("body is not a valid remote_write WriteRequest: {0}")]
    Protobuf(String),
    /// A count over its limit.
    #[error("write request has more than {max} {what}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A series' labels are not valid.
    #[error("invalid series: {0}")]
    Series(#[from] InvalidSeries),
    /// Native histograms are not stored yet.
    #[error("native histograms are not supported; send classic histograms")]
    NativeHistogram,
}

impl RemoteWriteError {
    /// The reason word counted on /metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RemoteWriteError::Snappy(_) => "compression",
            RemoteWriteError::TooLarge { .. } => "too_large",
            RemoteWriteError::Protobuf(_) => "format",
            RemoteWriteError::TooMany { .. } => "too_many",
            RemoteWriteError::Series(_) => "invalid_series",
            RemoteWriteError::NativeHistogram => "native_histogram",
        }
    }
}

/// A decoded write request whose series are named by key: series the
/// storage index knows by their label pairs are resolved to their id
/// without building labels; the rest carry their checked labels.
#[derive(Debug, Default)]
pub struct KeyedRequest {
    /// Series with samples.
    pub series: Vec<KeyedWrite>,
    /// Family metadata, if the sender included it.
    pub metadata: Vec<MetricMetadata>,
}

/// Decompresses and decodes a remote_write body.
pub fn decode(body: &[u8], limits: &RemoteWriteLimits) -> Result<WriteRequest, RemoteWriteError> {
    let raw = decompress(body, limits)?;
    let (series, metadata) = decode_write_request(&raw, limits, |b| decode_series(b, limits))?;
    Ok(WriteRequest { series, metadata })
}

/// Decompresses and decodes a remote_write body, resolving series `known`
/// finds by their label pairs: [`decompress`] then [`decode_keyed_raw`]
/// (ingestion calls the two apart, decompressing before it locks the
/// index).
#[cfg(test)]
fn decode_keyed(
    body: &[u8],
    limits: &RemoteWriteLimits,
    known: &PairsLookup<'_>,
) -> Result<KeyedRequest, RemoteWriteError> {
    decode_keyed_raw(&decompress(body, limits)?, limits, known)
}

/// Decodes a decompressed remote_write message, resolving series `known`
/// finds by their label pairs. Accepts and refuses exactly what [`decode`]
/// does, with the same errors: a series is resolved only when its bytes
/// are well-formed and its pairs equal a stored, checked label set;
/// anything else is decoded and checked as [`decode`] does it.
pub fn decode_keyed_raw(
    raw: &[u8],
    limits: &RemoteWriteLimits,
    known: &PairsLookup<'_>,
) -> Result<KeyedRequest, RemoteWriteError> {
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
    let (series, metadata) = decode_write_request(raw, limits, |b| {
        if let Some((id, samples)) = known_series(b, known, &mut pairs) {
            return Ok(KeyedWrite {
                key: SeriesKey::Known(id),
                samples,
            });
        }
        let s = decode_series(b, limits)?;
        Ok(KeyedWrite {
            key: SeriesKey::Labels(s.labels),
            samples: s.samples,
        })
    })?;
    Ok(KeyedRequest { series, metadata })
}

/// The snappy block `body` decompressed, its declared size checked against
/// the limit before anything is allocated.
pub fn decompress(body: &[u8], limits: &RemoteWriteLimits) -> Result<Vec<u8>, RemoteWriteError> {
    // The block states its decompressed length first: check it before
    // allocating anything.
    let size =
        snap::raw::decompress_len(body).map_err(|e| RemoteWriteError::Snappy(e.to_string()))?;
    if size > limits.max_decompressed_bytes {
        return Err(RemoteWriteError::TooLarge {
            size,
            max: limits.max_decompressed_bytes,
        });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| RemoteWriteError::Snappy(e.to_string()))
}

/// Samples held by a decoded series.
trait HasSamples {
    fn sample_count(&self) -> usize;
}

impl HasSamples for SeriesWrite {
    fn sample_count(&self) -> usize {
        self.samples.len()
    }
}

impl HasSamples for KeyedWrite {
    fn sample_count(&self) -> usize {
        self.samples.len()
    }
}

/// The series a well-formed `TimeSeries` names, when `known` finds its
/// label pairs, with its samples; `None` for anything else (the caller
/// then decodes it fully, errors included).
fn known_series<'a>(
    buf: &'a [u8],
    known: &PairsLookup<'_>,
    pairs: &mut Vec<(&'a [u8], &'a [u8])>,
) -> Option<(crate::storage::SeriesId, Vec<(i64, f64)>)> {
    pairs.clear();
    let mut samples = Vec::new();
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key().ok()? {
        match (field, wire) {
            (1, WIRE_LEN) => pairs.push(label_pair(r.bytes().ok()?)?),
            (2, WIRE_LEN) => samples.push(decode_sample(r.bytes().ok()?).ok()?),
            (4, WIRE_LEN) => return None,
            _ => r.skip(wire).ok()?,
        }
    }
    let id = known(pairs_hash(pairs.iter().copied()), pairs)?;
    Some((id, samples))
}

/// A `Label`'s name and value bytes, unchecked.
fn label_pair(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key().ok()? {
        match (field, wire) {
            (1, WIRE_LEN) => name = r.bytes().ok()?,
            (2, WIRE_LEN) => value = r.bytes().ok()?,
            _ => r.skip(wire).ok()?,
        }
    }
    Some((name, value))
}

fn decode_write_request<'b, S: HasSamples>(
    buf: &'b [u8],
    limits: &RemoteWriteLimits,
    mut one: impl FnMut(&'b [u8]) -> Result<S, RemoteWriteError>,
) -> Result<(Vec<S>, Vec<MetricMetadata>), RemoteWriteError> {
    let mut req = (Vec::new(), Vec::new());
    let mut samples = 0usize;
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, WIRE_LEN) => {
                let s = one(r.bytes()?)?;
                samples += s.sample_count();
                if samples > limits.max_samples {
                    return Err(RemoteWriteError::TooMany {
                        what: "samples",
                        max: limits.max_samples,
                    });
                }
                req.0.push(s);
                if req.0.len() > limits.max_series {
                    return Err(RemoteWriteError::TooMany {
                        what: "series",
                        max: limits.max_series,
                    });
                }
            }
            (3, WIRE_LEN) => {
                if let Some(m) = decode_metadata(r.bytes()?)? {
                    req.1.push(m);
                }
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(req)
}

fn decode_series(buf: &[u8], limits: &RemoteWriteLimits) -> Result<SeriesWrite, RemoteWriteError> {
    let mut labels = Vec::new();
    let mut samples = Vec::new();
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, WIRE_LEN) => {
                if labels.len() >= limits.labels.max_labels {
                    return Err(RemoteWriteError::TooMany {
                        what: "labels in one series",
                        max: limits.labels.max_labels,
                    });
                }
                labels.push(decode_label(r.bytes()?)?);
            }
            (2, WIRE_LEN) => samples.push(decode_sample(r.bytes()?)?),
            (4, WIRE_LEN) => return Err(RemoteWriteError::NativeHistogram),
            _ => r.skip(wire)?,
        }
    }
    let labels = Labels::from_wire(labels);
    labels.validate(&limits.labels)?;
    Ok(SeriesWrite { labels, samples })
}

fn decode_label(buf: &[u8]) -> Result<Label, RemoteWriteError> {
    let (mut name, mut value) = (String::new(), String::new());
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, WIRE_LEN) => name = r.string()?,
            (2, WIRE_LEN) => value = r.string()?,
            _ => r.skip(wire)?,
        }
    }
    Ok(Label { name, value })
}

fn decode_sample(buf: &[u8]) -> Result<(i64, f64), RemoteWriteError> {
    let (mut ts, mut v) = (0i64, 0f64);
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, WIRE_I64) => v = f64::from_bits(r.fixed64()?),
            (2, WIRE_VARINT) => ts = r.varint()? as i64,
            _ => r.skip(wire)?,
        }
    }
    Ok((ts, v))
}

fn decode_metadata(buf: &[u8]) -> Result<Option<MetricMetadata>, RemoteWriteError> {
    let mut m = MetricMetadata {
        name: String::new(),
        kind: MetricKind::Unknown,
        help: String::new(),
        unit: String::new(),
    };
    let mut r = Reader::new(buf);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, WIRE_VARINT) => {
                // prompb MetricType: UNKNOWN=0 COUNTER=1 GAUGE=2 HISTOGRAM=3
                // GAUGEHISTOGRAM=4 SUMMARY=5 INFO=6 STATESET=7.
                m.kind = match r.varint()? {
                    1 => MetricKind::Counter,
                    2 => MetricKind::Gauge,
                    3 | 4 => MetricKind::Histogram,
                    5 => MetricKind::Summary,
                    _ => MetricKind::Unknown,
                }
            }
            (2, WIRE_LEN) => m.name = r.string()?,
            (4, WIRE_LEN) => m.help = r.string()?,
            (5, WIRE_LEN) => m.unit = r.string()?,
            _ => r.skip(wire)?,
        }
    }
    Ok((!m.name.is_empty()).then_some(m))
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// A cursor over protobuf bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn err(&self, what: &str) -> RemoteWriteError {
        RemoteWriteError::Protobuf(format!("{what} at byte {}", self.pos))
    }

    fn key(&mut self) -> Result<Option<(u64, u8)>, RemoteWriteError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        Ok(Some((field, (k & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64, RemoteWriteError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| self.err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn fixed64(&mut self) -> Result<u64, RemoteWriteError> {
        let end = self.pos + 8;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.err("truncated fixed64"))?;
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], RemoteWriteError> {
        let len = usize::try_from(self.varint()?).map_err(|_| self.err("length too large"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.err("length past the end"))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn string(&mut self) -> Result<String, RemoteWriteError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn skip(&mut self, wire: u8) -> Result<(), RemoteWriteError> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_I64 => self.fixed64().map(|_| ()),
            WIRE_LEN => self.bytes().map(|_| ()),
            WIRE_I32 => {
                let end = self.pos + 4;
                if end > self.buf.len() {
                    return Err(self.err("truncated fixed32"));
                }
                self.pos = end;
                Ok(())
            }
            w => Err(self.err(&format!("unsupported wire type {w}"))),
        }
    }
}

/// Encodes a write request (for tests and the load generator).
pub fn encode(series: &[SeriesWrite]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        varint(out, (field << 3) | u64::from(WIRE_LEN));
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    let mut req = Vec::new();
    for s in series {
        let mut ts = Vec::new();
        for l in s.labels.iter() {
            let mut lb = Vec::new();
            field_bytes(&mut lb, 1, l.name.as_bytes());
            field_bytes(&mut lb, 2, l.value.as_bytes());
            field_bytes(&mut ts, 1, &lb);
        }
        for (t, v) in &s.samples {
            let mut sb = Vec::new();
            varint(&mut sb, (1 << 3) | u64::from(WIRE_I64));
            sb.extend_from_slice(&v.to_bits().to_le_bytes());
            varint(&mut sb, (2 << 3) | u64::from(WIRE_VARINT));
            varint(&mut sb, *t as u64);
            field_bytes(&mut ts, 2, &sb);
        }
        field_bytes(&mut req, 1, &ts);
    }
    snap::raw::Encoder::new()
        .compress_vec(&req)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> RemoteWriteLimits {
        RemoteWriteLimits {
            max_decompressed_bytes: 1 << 20,
            max_samples: 10_000,
            max_series: 1_000,
            labels: LabelLimits::default(),
        }
    }

    fn series(name: &str, samples: Vec<(i64, f64)>) -> SeriesWrite {
        SeriesWrite {
            labels: Labels::new(name, [("job", "prom"), ("instance", "a:9100")]),
            samples,
        }
    }

    #[test]
    fn a_request_round_trips_with_nan_and_stale_bits() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let s = vec![
            series(
                "up",
                vec![(1_700_000_000_000, 1.0), (1_700_000_015_000, stale)],
            ),
            series("x_total", vec![(1_700_000_000_000, f64::INFINITY)]),
        ];
        let got = decode(&encode(&s), &limits()).unwrap();
        assert_eq!(got.series.len(), 2);
        assert_eq!(got.series[0].labels, s[0].labels);
        assert_eq!(got.series[0].samples[1].1.to_bits(), stale.to_bits());
        assert_eq!(got.series[1].samples[0].1, f64::INFINITY);
    }

    #[test]
    fn unsorted_or_duplicate_labels_are_refused() {
        let unsorted = SeriesWrite {
            labels: Labels::from_wire(vec![
                Label {
                    name: "__name__".into(),
                    value: "up".into(),
                },
                Label {
                    name: "job".into(),
                    value: "x".into(),
                },
                Label {
                    name: "instance".into(),
                    value: "y".into(),
                },
            ]),
            samples: vec![(1, 1.0)],
        };
        assert!(matches!(
            decode(&encode(&[unsorted]), &limits()),
            Err(RemoteWriteError::Series(InvalidSeries::Unsorted { .. }))
        ));
    }

    #[test]
    fn bad_snappy_and_bombs_are_refused_before_allocating() {
        assert!(matches!(
            decode(b"\xff\xff\xff\xff\x0fnot snappy", &limits()),
            Err(RemoteWriteError::TooLarge { .. }) | Err(RemoteWriteError::Snappy(_))
        ));
        let big = snap::raw::Encoder::new()
            .compress_vec(&vec![0u8; 2 << 20])
            .unwrap();
        assert!(matches!(
            decode(&big, &limits()),
            Err(RemoteWriteError::TooLarge { .. })
        ));
        let garbage = snap::raw::Encoder::new()
            .compress_vec(b"\x0a\xff\xff\xff\xff\x0f")
            .unwrap();
        assert!(matches!(
            decode(&garbage, &limits()),
            Err(RemoteWriteError::Protobuf(_))
        ));
    }

    #[test]
    fn known_series_resolve_from_the_wire_and_the_rest_decode_as_before() {
        use crate::storage::SeriesId;
        use crate::storage::index::label_pairs;
        let s = vec![
            series("up", vec![(1_700_000_000_000, 1.0)]),
            series("x_total", vec![(1_700_000_000_000, 2.0)]),
        ];
        let known = s[0].labels.clone();
        let hash = pairs_hash(label_pairs(&known));
        let lookup = |h: u64, pairs: &[(&[u8], &[u8])]| {
            let same = h == hash
                && pairs.len() == known.len()
                && label_pairs(&known).zip(pairs).all(|(a, b)| a == *b);
            same.then_some(SeriesId(7))
        };
        let got = decode_keyed(&encode(&s), &limits(), &lookup).unwrap();
        assert_eq!(got.series.len(), 2);
        assert_eq!(got.series[0].key, SeriesKey::Known(SeriesId(7)));
        assert_eq!(got.series[0].samples, s[0].samples);
        assert_eq!(got.series[1].key, SeriesKey::Labels(s[1].labels.clone()));
        assert_eq!(got.series[1].samples, s[1].samples);
    }

    proptest! {
        #[test]
        fn keyed_decoding_accepts_and_refuses_exactly_what_decoding_does(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let none = |_: u64, _: &[(&[u8], &[u8])]| None;
            let body = snap::raw::Encoder::new().compress_vec(&bytes).unwrap();
            for b in [&bytes, &body] {
                match (decode(b, &limits()), decode_keyed(b, &limits(), &none)) {
                    (Ok(a), Ok(k)) => {
                        prop_assert_eq!(a.series.len(), k.series.len());
                        for (a, k) in a.series.iter().zip(&k.series) {
                            prop_assert_eq!(&k.key, &SeriesKey::Labels(a.labels.clone()));
                        }
                    }
                    (Err(a), Err(k)) => prop_assert_eq!(a.to_string(), k.to_string()),
                    (a, k) => prop_assert!(false, "decode {:?}, keyed {:?}", a.is_ok(), k.is_ok()),
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode(&bytes, &limits());
            let body = snap::raw::Encoder::new().compress_vec(&bytes).unwrap();
            let _ = decode(&body, &limits());
        }
    }
}
