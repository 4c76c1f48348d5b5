//! The spool's record format on disk: encoding one record, checking one
//! record, and scanning a segment file for its good prefix.
//!
//! Everything here treats file bytes as untrusted: it never panics, never
//! allocates more than the file holds, and never loops without consuming
//! input, whatever the bytes are.
//!
//! One record, all integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "NSR1" (the 1 is the format version)
//!      4     4  payload length in bytes (u32)
//!      8     8  record id (u64)
//!     16     4  CRC-32 (IEEE) of the payload
//!     20     4  CRC-32 (IEEE) of bytes 0..20 of this header
//!     24     n  payload
//! ```
//!
//! The header has its own CRC so that a damaged length or id is told apart
//! from a payload that was torn mid-write: only a header that checks out is
//! trusted to say how long its payload is.

use nines_shared::checksum::crc32;
use std::fmt;
use std::io::{self, Read};

/// Bytes before each payload.
pub(super) const HEADER_LEN: usize = 24;
/// Marks the start of a record and carries the format version.
const MAGIC: [u8; 4] = *b"NSR1";
/// Largest payload the format accepts. Far above any batch; it bounds what
/// a damaged-but-plausible header can make a scan allocate.
pub(super) const MAX_PAYLOAD: usize = 256 << 20;

/// Appends the record `id` with `payload` to `out`. The caller has checked
/// that the payload is at most [`MAX_PAYLOAD`] bytes.
pub(super) fn encode(id: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    let header_crc = crc32(&out[start..start + 20]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What was wrong at the point where a segment stopped being readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Damage {
    /// Fewer bytes left than a header needs: a write torn mid-header.
    ShortHeader {
        /// Bytes that were left.
        left: u64,
    },
    /// The bytes do not start with a record header (wrong magic or the
    /// header's own CRC fails): garbage or a damaged header.
    NotAHeader,
    /// A good header with a record id out of sequence.
    WrongId {
        /// The id the sequence called for.
        expected: u64,
        /// The id the header carries.
        found: u64,
    },
    /// A good header whose payload runs past the end of the file: a write
    /// torn mid-payload.
    ShortPayload {
        /// Payload bytes the header announces.
        len: u64,
        /// Bytes that were left.
        left: u64,
    },
    /// The payload does not match its CRC.
    PayloadCrc,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::ShortHeader { left } => write!(f, "torn header ({left} bytes)"),
            Damage::NotAHeader => write!(f, "bytes that are not a record header"),
            Damage::WrongId { expected, found } => {
                write!(f, "record id {found} where {expected} was due")
            }
            Damage::ShortPayload { len, left } => {
                write!(f, "torn payload ({left} of {len} bytes)")
            }
            Damage::PayloadCrc => write!(f, "payload CRC mismatch"),
        }
    }
}

/// A header that checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// Payload length.
    pub len: u64,
    /// Record id.
    pub id: u64,
    /// CRC-32 of the payload.
    pub crc: u32,
}

/// Reads a header from the first [`HEADER_LEN`] bytes of `b`.
pub(super) fn parse_header(b: &[u8]) -> Result<Header, Damage> {
    let Some(h) = b.get(..HEADER_LEN) else {
        return Err(Damage::ShortHeader {
            left: b.len() as u64,
        });
    };
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if h[..4] != MAGIC || crc32(&h[..20]) != u32_at(20) {
        return Err(Damage::NotAHeader);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[8..16]);
    let len = u64::from(u32_at(4));
    if len > MAX_PAYLOAD as u64 {
        // Only a damaged writer could have made this; treat as garbage.
        return Err(Damage::NotAHeader);
    }
    Ok(Header {
        len,
        id: u64::from_le_bytes(id),
        crc: u32_at(16),
    })
}

/// Checks one whole record (`rec` is exactly header plus payload) that
/// should carry `expected` as its id, and returns its payload.
pub(super) fn check_record(rec: &[u8], expected: u64) -> Result<&[u8], Damage> {
    let h = parse_header(rec)?;
    if h.id != expected {
        return Err(Damage::WrongId {
            expected,
            found: h.id,
        });
    }
    let payload = &rec[HEADER_LEN..];
    if payload.len() as u64 != h.len {
        return Err(Damage::ShortPayload {
            len: h.len,
            left: payload.len() as u64,
        });
    }
    if crc32(payload) != h.crc {
        return Err(Damage::PayloadCrc);
    }
    Ok(payload)
}

/// The good prefix of a segment.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// File offset of each good record, in order; record `k` has id
    /// `base + k`.
    pub offsets: Vec<u64>,
    /// Offset just past the last good record.
    pub end: u64,
    /// Where the good prefix stopped and why, if it did not reach the end.
    pub damage: Option<Damage>,
}

/// Scans `len` bytes from `r` (a segment whose first record has id `base`)
/// for records that check out, stopping at the first that does not.
pub(super) fn scan(r: impl Read, len: u64, base: u64) -> io::Result<Scan> {
    // `take` guards against a file that grew after its length was taken.
    let mut r = io::BufReader::with_capacity(64 << 10, r.take(len));
    let mut out = Scan::default();
    let mut payload = Vec::new();
    loop {
        let left = len - out.end;
        if left == 0 {
            return Ok(out);
        }
        let expected = base.saturating_add(out.offsets.len() as u64);
        match next_record(&mut r, left, expected, &mut payload)? {
            Ok(size) => {
                out.offsets.push(out.end);
                out.end += size;
            }
            Err(damage) => {
                out.damage = Some(damage);
                return Ok(out);
            }
        }
    }
}

/// Reads the record due next (id `expected`, `left` bytes to the end of
/// the file) and returns its size, or what is wrong with it.
fn next_record(
    r: &mut impl Read,
    left: u64,
    expected: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Result<u64, Damage>> {
    let mut header = [0u8; HEADER_LEN];
    if left < HEADER_LEN as u64 || !read_all(r, &mut header)? {
        return Ok(Err(Damage::ShortHeader { left }));
    }
    let h = match parse_header(&header) {
        Ok(h) => h,
        Err(d) => return Ok(Err(d)),
    };
    if h.id != expected {
        return Ok(Err(Damage::WrongId {
            expected,
            found: h.id,
        }));
    }
    let body_left = left - HEADER_LEN as u64;
    let torn = Damage::ShortPayload {
        len: h.len,
        left: body_left,
    };
    if h.len > body_left {
        return Ok(Err(torn));
    }
    // h.len is at most MAX_PAYLOAD and at most what the file holds.
    payload.resize(h.len as usize, 0);
    if !read_all(r, payload)? {
        return Ok(Err(torn));
    }
    if crc32(payload) != h.crc {
        return Ok(Err(Damage::PayloadCrc));
    }
    Ok(Ok(HEADER_LEN as u64 + h.len))
}

/// Fills `buf`, or says `false` if the file ended first: a file shorter
/// than its length said is damage (a torn write), not an I/O failure.
fn read_all(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_scan_stops_at_the_first_bad_one() {
        let mut seg = Vec::new();
        for (i, p) in [&b"one"[..], b"", b"three"].iter().enumerate() {
            encode(7 + i as u64, p, &mut seg);
        }
        let good = seg.len() as u64;
        let s = scan(&seg[..], good, 7).unwrap();
        assert_eq!(s.offsets, vec![0, 27, 51]);
        assert_eq!((s.end, s.damage), (good, None));
        assert_eq!(check_record(&seg[27..51], 8).unwrap(), b"");
        assert_eq!(
            check_record(&seg[51..], 8),
            Err(Damage::WrongId {
                expected: 8,
                found: 9
            })
        );

        let mut bad = seg.clone();
        bad[51 + HEADER_LEN] ^= 1;
        let s = scan(&bad[..], good, 7).unwrap();
        assert_eq!((s.offsets.len(), s.end), (2, 51));
        assert_eq!(s.damage, Some(Damage::PayloadCrc));

        let s = scan(&seg[..], good, 6).unwrap();
        assert!(s.offsets.is_empty());
        assert!(matches!(s.damage, Some(Damage::WrongId { .. })));

        let s = scan(&seg[..60], 60, 7).unwrap();
        assert_eq!(s.end, 51);
        assert_eq!(s.damage, Some(Damage::ShortHeader { left: 9 }));
        let s = scan(&seg[..77], 77, 7).unwrap();
        assert_eq!(s.damage, Some(Damage::ShortPayload { len: 5, left: 2 }));
    }
}
