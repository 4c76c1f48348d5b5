//! The chunk codec: a run of samples `(timestamp ms, f64)` with strictly
//! ascending timestamps, packed into a byte blob after the ideas of
//! Facebook's Gorilla paper (Pelkonen et al., VLDB 2015): timestamps as
//! delta-of-delta in variable-width bit buckets, values as the XOR with the
//! previous value, written as the window of meaningful bits between the
//! leading and trailing zeros.
//!
//! Layout (all written by this module, nothing borrowed):
//!
//! ```text
//! u8       format version (1)
//! varint   count (>= 1)
//! varint   first timestamp, zigzag
//! varint   last - first timestamp (wrapping, as u64)
//! bits     first value (64 raw bits), then per later sample a timestamp
//!          code and a value code (below), MSB first, zero-padded to a byte
//! u32 LE   CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Timestamp code: `dod = delta - previous delta` (the first delta's
//! previous is 0), wrapping i64 arithmetic so any ascending pair round-trips:
//! `0` dod = 0; `10` + 4 bits; `110` + 9; `1110` + 14; `11110` + 24;
//! `11111` + 64 (two's complement in that many bits). The 4-bit bucket is
//! for the few milliseconds of timer jitter real timestamps carry; 14 bits
//! cover a missed 1 s or 5 s scrape, 24 bits gaps of hours.
//!
//! Value code, with `x = bits ^ previous bits`: `0` x = 0; `10` + the
//! meaningful bits in the previous window (when x fits it and that is no
//! longer than opening a new one); `11` + 5 bits leading zeros (capped at
//! 31) + 6 bits window length (64 written as 0) + the window. Values are
//! handled as bit patterns, so every f64 (NaN payloads, the stale marker,
//! -0.0, infinities) comes back bit for bit.
//!
//! Decoding checks the checksum first, then the structure (version, counts,
//! ascending timestamps, last timestamp, padding, length), and returns an
//! error for anything else; it never panics and never allocates more than
//! the input can describe.

use nines_shared::checksum::crc32;

/// Format version written in the first byte.
pub const VERSION: u8 = 1;

/// The body of a blob laid out as `version byte, body, CRC-32 (LE) of both`
/// (ingest log and rollup rows), once its length, checksum and version are
/// checked: everything before the checksum, the version byte first.
pub(crate) fn versioned_body(data: &[u8], version: u8) -> Result<&[u8], ChunkError> {
    if data.len() < 5 {
        return Err(ChunkError::Truncated);
    }
    let (body, tail) = data.split_at(data.len() - 4);
    if nines_shared::checksum::crc32(body)
        != u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]])
    {
        return Err(ChunkError::Checksum);
    }
    if body[0] != version {
        return Err(ChunkError::Version(body[0]));
    }
    Ok(body)
}

/// Why samples could not be encoded or a blob could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// An encoder was finished without samples.
    #[error("empty chunk")]
    Empty,
    /// A timestamp was not greater than the one before it.
    #[error("timestamp {ts} not after {prev}")]
    NotAscending {
        /// The previous timestamp.
        prev: i64,
        /// The offending one.
        ts: i64,
    },
    /// The blob ends before what it describes.
    #[error("truncated chunk")]
    Truncated,
    /// The checksum does not match the bytes.
    #[error("chunk checksum mismatch")]
    Checksum,
    /// Unknown format version.
    #[error("unknown chunk version {0}")]
    Version(u8),
    /// The bytes do not describe a valid chunk.
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Number of samples.
    pub count: u32,
    /// First timestamp.
    pub first_ts: i64,
    /// Last timestamp.
    pub last_ts: i64,
}

// ---------------------------------------------------------------- bits

/// Appends bits MSB first.
#[derive(Default, Clone)]
struct BitWriter {
    buf: Vec<u8>,
    /// Bits still free in the last byte (0 = a new byte is needed).
    free: u32,
}

impl BitWriter {
    fn bits(&self) -> usize {
        self.buf.len() * 8 - self.free as usize
    }

    /// Writes the low `n` bits of `value` (n <= 64).
    fn write(&mut self, value: u64, mut n: u32) {
        debug_assert!(n <= 64);
        while n > 0 {
            if self.free == 0 {
                self.buf.push(0);
                self.free = 8;
            }
            let k = self.free.min(n);
            let chunk = (value >> (n - k)) & ((1u64 << k) - 1);
            let last = self.buf.len() - 1;
            self.buf[last] |= (chunk as u8) << (self.free - k);
            self.free -= k;
            n -= k;
        }
    }

    fn bit(&mut self, b: bool) {
        self.write(b as u64, 1);
    }
}

/// Reads bits MSB first from a byte slice.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    /// The next `n` bits (at most 64), most significant first.
    fn read(&mut self, n: u32) -> Result<u64, ChunkError> {
        if (n as usize) > self.remaining() {
            return Err(ChunkError::Truncated);
        }
        if n == 0 {
            return Ok(0);
        }
        if n > 56 {
            // More than one 8-byte load can hold after a partial byte.
            let high = self.read(n - 32)?;
            let low = self.read(32)?;
            return Ok((high << 32) | low);
        }
        // Eight bytes from the current one (zeros past the end), of which
        // the `n` after the bits already used are wanted: `used + n <= 63`.
        let at = self.pos / 8;
        let word = match self.data.get(at..at + 8) {
            Some(b) => u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            None => {
                let mut buf = [0u8; 8];
                let rest = self.data.get(at..).unwrap_or_default();
                buf[..rest.len()].copy_from_slice(rest);
                u64::from_be_bytes(buf)
            }
        };
        let used = (self.pos % 8) as u32;
        self.pos += n as usize;
        Ok((word << used) >> (64 - n))
    }

    fn bit(&mut self) -> Result<bool, ChunkError> {
        let byte = *self.data.get(self.pos / 8).ok_or(ChunkError::Truncated)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }
}

// ------------------------------------------------------------- varints

pub(super) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uvarint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(super) fn get_uvarint(data: &[u8], pos: &mut usize) -> Result<u64, ChunkError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *data.get(*pos).ok_or(ChunkError::Truncated)?;
        *pos += 1;
        if i == 9 && b > 1 {
            return Err(ChunkError::Corrupt("varint overflow"));
        }
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(ChunkError::Corrupt("varint too long"))
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

// ------------------------------------------------------------- encoder

/// Timestamp buckets: (prefix bits, prefix length, payload bits).
const TS_BUCKETS: [(u64, u32, u32); 4] = [
    (0b10, 2, 4),
    (0b110, 3, 9),
    (0b1110, 4, 14),
    (0b11110, 5, 24),
];

fn fits_signed(v: i64, bits: u32) -> bool {
    let lim = 1i64 << (bits - 1);
    (-lim..lim).contains(&v)
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

/// Builds one chunk sample by sample.
#[derive(Default, Clone)]
pub struct ChunkEncoder {
    w: BitWriter,
    count: u32,
    first_ts: i64,
    last_ts: i64,
    prev_delta: i64,
    prev_bits: u64,
    /// Current value window (leading, trailing zeros), once opened.
    window: Option<(u32, u32)>,
}

impl ChunkEncoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many bytes [`finish`](Self::finish) would return now.
    pub fn size(&self) -> usize {
        1 + uvarint_len(self.count as u64)
            + uvarint_len(zigzag(self.first_ts))
            + uvarint_len(self.last_ts.wrapping_sub(self.first_ts) as u64)
            + self.w.bits().div_ceil(8)
            + 4
    }

    /// First timestamp pushed.
    pub fn first_ts(&self) -> Option<i64> {
        (self.count > 0).then_some(self.first_ts)
    }

    /// Last timestamp pushed.
    pub fn last_ts(&self) -> Option<i64> {
        (self.count > 0).then_some(self.last_ts)
    }

    /// Appends a sample; its timestamp must be after the previous one.
    pub fn push(&mut self, ts: i64, value: f64) -> Result<(), ChunkError> {
        let bits = value.to_bits();
        if self.count == 0 {
            self.first_ts = ts;
            self.last_ts = ts;
            self.prev_bits = bits;
            self.w.write(bits, 64);
            self.count = 1;
            return Ok(());
        }
        if ts <= self.last_ts {
            return Err(ChunkError::NotAscending {
                prev: self.last_ts,
                ts,
            });
        }
        if self.count == u32::MAX {
            return Err(ChunkError::Corrupt("too many samples"));
        }
        let delta = ts.wrapping_sub(self.last_ts);
        self.put_dod(delta.wrapping_sub(self.prev_delta));
        self.prev_delta = delta;
        self.last_ts = ts;
        self.put_value(bits);
        self.count += 1;
        Ok(())
    }

    fn put_dod(&mut self, dod: i64) {
        if dod == 0 {
            self.w.bit(false);
            return;
        }
        for (prefix, plen, bits) in TS_BUCKETS {
            if fits_signed(dod, bits) {
                self.w.write(prefix, plen);
                self.w.write(dod as u64 & ((1u64 << bits) - 1), bits);
                return;
            }
        }
        self.w.write(0b11111, 5);
        self.w.write(dod as u64, 64);
    }

    fn put_value(&mut self, bits: u64) {
        let x = bits ^ self.prev_bits;
        self.prev_bits = bits;
        if x == 0 {
            self.w.bit(false);
            return;
        }
        let lead = x.leading_zeros().min(31);
        let trail = x.trailing_zeros();
        let new_len = 64 - lead - trail;
        if let Some((wl, wt)) = self.window {
            let old_len = 64 - wl - wt;
            // Reuse the window when x fits and it costs no more than
            // describing a new one (11 bits of description).
            if lead >= wl && trail >= wt && old_len <= new_len + 11 {
                self.w.write(0b10, 2);
                self.w.write(x >> wt, old_len);
                return;
            }
        }
        self.w.write(0b11, 2);
        self.w.write(lead as u64, 5);
        self.w.write((new_len & 63) as u64, 6);
        self.w.write(x >> trail, new_len);
        self.window = Some((lead, trail));
    }

    /// Appends the samples pushed so far with `start <= ts <= end` to
    /// `out`, without finishing the encoder.
    pub fn decode_range_into(
        &self,
        start: i64,
        end: i64,
        out: &mut Vec<(i64, f64)>,
    ) -> Result<(), ChunkError> {
        if self.count == 0 || self.last_ts < start || self.first_ts > end {
            return Ok(());
        }
        let mut body = Vec::with_capacity(self.size());
        body.push(VERSION);
        put_uvarint(&mut body, self.count as u64);
        put_uvarint(&mut body, zigzag(self.first_ts));
        put_uvarint(&mut body, self.last_ts.wrapping_sub(self.first_ts) as u64);
        body.extend_from_slice(&self.w.buf);
        decode_body(&body, start, end, out).map(|_| ())
    }

    /// Gives back unused capacity.
    pub fn shrink(&mut self) {
        self.w.buf.shrink_to_fit();
    }

    /// The finished blob.
    pub fn finish(self) -> Result<Vec<u8>, ChunkError> {
        if self.count == 0 {
            return Err(ChunkError::Empty);
        }
        let mut out = Vec::with_capacity(self.size());
        out.push(VERSION);
        put_uvarint(&mut out, self.count as u64);
        put_uvarint(&mut out, zigzag(self.first_ts));
        put_uvarint(&mut out, self.last_ts.wrapping_sub(self.first_ts) as u64);
        out.extend_from_slice(&self.w.buf);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

/// Encodes samples with strictly ascending timestamps.
pub fn encode(samples: &[(i64, f64)]) -> Result<Vec<u8>, ChunkError> {
    let mut e = ChunkEncoder::new();
    for &(t, v) in samples {
        e.push(t, v)?;
    }
    e.finish()
}

// ------------------------------------------------------------- decoder

/// Checks the checksum and returns the body (without the checksum).
fn checked_body(data: &[u8]) -> Result<&[u8], ChunkError> {
    if data.len() < 5 {
        return Err(ChunkError::Truncated);
    }
    let (body, tail) = data.split_at(data.len() - 4);
    let want = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32(body) != want {
        return Err(ChunkError::Checksum);
    }
    Ok(body)
}

/// Parses the header of a body; returns it and where the bits start.
fn parse_header(body: &[u8]) -> Result<(ChunkHeader, usize), ChunkError> {
    let version = *body.first().ok_or(ChunkError::Truncated)?;
    if version != VERSION {
        return Err(ChunkError::Version(version));
    }
    let mut pos = 1;
    let count = get_uvarint(body, &mut pos)?;
    let first_ts = unzigzag(get_uvarint(body, &mut pos)?);
    let span = get_uvarint(body, &mut pos)?;
    if count == 0 || count > u32::MAX as u64 {
        return Err(ChunkError::Corrupt("bad count"));
    }
    let last_ts = first_ts.wrapping_add(span as i64);
    if (count == 1) != (span == 0) || last_ts < first_ts {
        return Err(ChunkError::Corrupt("bad time span"));
    }
    // The first value takes 64 bits, every later sample at least 2.
    let bits = (body.len() - pos) as u64 * 8;
    if bits < 64 || (count - 1) * 2 > bits - 64 {
        return Err(ChunkError::Truncated);
    }
    Ok((
        ChunkHeader {
            count: count as u32,
            first_ts,
            last_ts,
        },
        pos,
    ))
}

/// The header of a chunk (checksum verified).
pub fn header(data: &[u8]) -> Result<ChunkHeader, ChunkError> {
    parse_header(checked_body(data)?).map(|(h, _)| h)
}

/// Decodes every sample.
pub fn decode(data: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    let mut out = Vec::new();
    decode_range(data, i64::MIN, i64::MAX, &mut out)?;
    Ok(out)
}

/// Appends the samples with `start <= ts <= end` to `out`; returns the
/// header. On error nothing is appended.
pub fn decode_range(
    data: &[u8],
    start: i64,
    end: i64,
    out: &mut Vec<(i64, f64)>,
) -> Result<ChunkHeader, ChunkError> {
    decode_body(checked_body(data)?, start, end, out)
}

/// Decodes a body without looking at a checksum (the structure is still
/// checked in full).
fn decode_body(
    body: &[u8],
    start: i64,
    end: i64,
    out: &mut Vec<(i64, f64)>,
) -> Result<ChunkHeader, ChunkError> {
    let (h, pos) = parse_header(body)?;
    let mark = out.len();
    let res = decode_samples(&body[pos..], h, start, end, out);
    if res.is_err() {
        out.truncate(mark);
    }
    res.map(|()| h)
}

fn decode_samples(
    bits: &[u8],
    h: ChunkHeader,
    start: i64,
    end: i64,
    out: &mut Vec<(i64, f64)>,
) -> Result<(), ChunkError> {
    let mut r = BitReader::new(bits);
    let mut ts = h.first_ts;
    let mut value = r.read(64)?;
    let mut delta = 0i64;
    let mut window: Option<(u32, u32)> = None;
    let keep = |t: i64| t >= start && t <= end;
    if keep(ts) {
        out.reserve((h.count as usize).min(1 << 16));
        out.push((ts, f64::from_bits(value)));
    }
    for _ in 1..h.count {
        // Timestamp.
        let mut ones = 0;
        while ones < 5 && r.bit()? {
            ones += 1;
        }
        let dod = match ones {
            0 => 0,
            5 => r.read(64)? as i64,
            n => {
                let bits = TS_BUCKETS[n - 1].2;
                sign_extend(r.read(bits)?, bits)
            }
        };
        delta = delta.wrapping_add(dod);
        let next = ts.wrapping_add(delta);
        if next <= ts {
            return Err(ChunkError::Corrupt("timestamps not ascending"));
        }
        ts = next;
        // Value.
        if r.bit()? {
            let x = if r.bit()? {
                let lead = r.read(5)? as u32;
                let len = match r.read(6)? as u32 {
                    0 => 64,
                    n => n,
                };
                if lead + len > 64 {
                    return Err(ChunkError::Corrupt("value window"));
                }
                let trail = 64 - lead - len;
                window = Some((lead, trail));
                r.read(len)? << trail
            } else {
                let (lead, trail) = window.ok_or(ChunkError::Corrupt("no value window"))?;
                r.read(64 - lead - trail)? << trail
            };
            value ^= x;
        }
        if keep(ts) {
            out.push((ts, f64::from_bits(value)));
        }
    }
    if ts != h.last_ts {
        return Err(ChunkError::Corrupt("last timestamp"));
    }
    let left = r.remaining();
    if left >= 8 || (left > 0 && r.read(left as u32)? != 0) {
        return Err(ChunkError::Corrupt("trailing bits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STALE: u64 = 0x7ff0_0000_0000_0002;

    fn bits_of(s: &[(i64, f64)]) -> Vec<(i64, u64)> {
        s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    fn roundtrip(s: &[(i64, f64)]) -> Vec<u8> {
        let mut e = ChunkEncoder::new();
        for &(t, v) in s {
            e.push(t, v).unwrap();
        }
        let predicted = e.size();
        let data = e.finish().unwrap();
        assert_eq!(data.len(), predicted);
        assert_eq!(bits_of(&decode(&data).unwrap()), bits_of(s));
        let h = header(&data).unwrap();
        assert_eq!(h.count as usize, s.len());
        assert_eq!(h.first_ts, s[0].0);
        assert_eq!(h.last_ts, s[s.len() - 1].0);
        data
    }

    #[test]
    fn special_values_and_extreme_timestamps_round_trip() {
        let specials = [
            f64::from_bits(STALE),
            f64::NAN,
            f64::from_bits(0x7ff8_dead_beef_0001),
            f64::from_bits(0xfff0_0000_0000_0001),
            -0.0,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            f64::MAX,
            f64::MIN,
        ];
        let ts = [
            i64::MIN,
            -5,
            0,
            1,
            2,
            1_700_000_000_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        let s: Vec<_> = ts
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, specials[i % specials.len()]))
            .collect();
        roundtrip(&s);
        let s: Vec<_> = specials
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 15_000, v))
            .collect();
        roundtrip(&s);
        roundtrip(&[(42, f64::from_bits(STALE))]);
    }

    #[test]
    fn regular_series_are_small() {
        // A counter scraped every 15 s: about 2 bits of timestamp and a
        // short XOR window per sample.
        let s: Vec<_> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i * 3) as f64))
            .collect();
        let data = roundtrip(&s);
        assert!(data.len() < 120 * 3, "{} bytes", data.len());
        // A constant series: 2 bits per sample.
        let s: Vec<_> = (0..1000).map(|i| (i * 1000, 1.0)).collect();
        let data = roundtrip(&s);
        assert!(data.len() < 1000 / 4 + 40, "{} bytes", data.len());
    }

    #[test]
    fn unsorted_or_duplicate_timestamps_are_refused() {
        let mut e = ChunkEncoder::new();
        e.push(10, 1.0).unwrap();
        assert_eq!(
            e.push(10, 2.0),
            Err(ChunkError::NotAscending { prev: 10, ts: 10 })
        );
        assert!(e.push(9, 2.0).is_err());
        assert_eq!(ChunkEncoder::new().finish(), Err(ChunkError::Empty));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let s: Vec<_> = (0..50)
            .map(|i| (i * 1000 + (i % 3), (i as f64).sqrt()))
            .collect();
        let data = encode(&s).unwrap();
        for n in 0..data.len() {
            assert!(decode(&data[..n]).is_err(), "prefix {n}");
        }
        for bit in 0..data.len() * 8 {
            let mut d = data.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&d).is_err(), "flip {bit}");
        }
        let mut long = data.clone();
        long.push(0);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn range_decoding_keeps_only_the_range() {
        let s: Vec<_> = (0..100).map(|i| (i * 10, i as f64)).collect();
        let data = encode(&s).unwrap();
        let mut out = vec![(-1, 0.0)];
        decode_range(&data, 95, 200, &mut out).unwrap();
        assert_eq!(out[0].0, -1);
        assert_eq!(
            out[1..].iter().map(|x| x.0).collect::<Vec<_>>(),
            (10..=20).map(|i| i * 10).collect::<Vec<_>>()
        );
    }

    fn value_bits() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            Just(STALE),
            Just(f64::NAN.to_bits()),
            Just((-0.0f64).to_bits()),
            Just(f64::INFINITY.to_bits()),
            Just(f64::NEG_INFINITY.to_bits()),
            (0u64..1_000_000).prop_map(|i| (i as f64).to_bits()),
            (0u64..1000).prop_map(|i| (i as f64 * 0.01).to_bits()),
            (0x7ff0_0000_0000_0001u64..=0x7fff_ffff_ffff_ffff),
        ]
    }

    /// Strictly ascending timestamps: regular with jitter and gaps, or
    /// arbitrary (huge gaps across the whole i64 range).
    fn timestamps() -> impl Strategy<Value = Vec<i64>> {
        let regular = (
            any::<i32>(),
            1i64..100_000,
            prop::collection::vec(
                (0i64..20, prop::bool::weighted(0.05), 0i64..1 << 40),
                1..300,
            ),
        )
            .prop_map(|(start, step, steps)| {
                let mut t = start as i64 * 1000;
                let mut out = Vec::new();
                for (jitter, gap, gap_len) in steps {
                    out.push(t);
                    t += step + jitter + if gap { gap_len } else { 0 };
                }
                out
            });
        let arbitrary = prop::collection::vec(any::<i64>(), 1..200).prop_map(|mut v| {
            v.sort_unstable();
            v.dedup();
            v
        });
        prop_oneof![regular, arbitrary]
    }

    proptest! {
        #[test]
        fn any_ascending_run_round_trips(
            ts in timestamps(),
            vals in prop::collection::vec(value_bits(), 300),
        ) {
            let s: Vec<(i64, f64)> = ts
                .iter()
                .zip(vals.iter().cycle())
                .map(|(&t, &b)| (t, f64::from_bits(b)))
                .collect();
            let data = encode(&s).unwrap();
            prop_assert_eq!(bits_of(&decode(&data).unwrap()), bits_of(&s));
            // Every strict prefix of the blob is refused.
            let cut = data.len() / 2;
            prop_assert!(decode(&data[..cut]).is_err());
            prop_assert!(decode(&data[..data.len() - 1]).is_err());
        }

        #[test]
        fn random_bytes_are_refused_without_panicking(data in prop::collection::vec(any::<u8>(), 0..400)) {
            prop_assert!(decode(&data).is_err());
            // The structural decoder alone (no checksum) must not panic
            // either, whatever it answers.
            let mut out = Vec::new();
            let _ = decode_body(&data, i64::MIN, i64::MAX, &mut out);
        }

        #[test]
        fn garbage_after_a_valid_header_does_not_panic(
            count in 1u64..1_000_000,
            first in any::<i64>(),
            span in any::<u64>(),
            bits in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut body = vec![VERSION];
            put_uvarint(&mut body, count);
            put_uvarint(&mut body, zigzag(first));
            put_uvarint(&mut body, span);
            body.extend_from_slice(&bits);
            let mut out = Vec::new();
            let _ = decode_body(&body, i64::MIN, i64::MAX, &mut out);
            let crc = crc32(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            let _ = decode(&body);
        }
    }
}
