//! The ingest log's row format: the samples of one committed write (a
//! native batch or a remote_write request), grouped by series, in one blob.
//! The row is what makes an acknowledged write durable; the in-memory head
//! (`head.rs`) is rebuilt from the rows still in the log at open.
//!
//! Layout (all written by this module):
//!
//! ```text
//! u8       format version (1)
//! varint   number of series groups
//! per group:
//!   varint   series id
//!   varint   number of samples n (>= 1)
//!   varint   first timestamp, zigzag; then n-1 deltas, zigzag (wrapping)
//!   n × u64  value bits, little endian
//! u32 LE   CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Within a group samples keep the order they were written in (a timestamp
//! written twice keeps both; replay applies them in order, so the last
//! wins). Values are raw bits: NaN payloads and staleness markers survive.
//!
//! Decoding checks the checksum, then the structure, and returns an error
//! for anything else; it never panics and never allocates more than the
//! input can describe.

use super::chunk::{ChunkError, get_uvarint, put_uvarint, unzigzag, versioned_body, zigzag};
use super::index::SeriesId;
use nines_shared::checksum::crc32;

/// Format version written in the first byte.
const VERSION: u8 = 1;

/// Samples of one series in a log row, in write order: (ts, value bits).
pub type Group = (SeriesId, Vec<(i64, u64)>);

/// Encodes groups (empty groups are left out).
pub fn encode(groups: &[Group]) -> Vec<u8> {
    let samples: usize = groups.iter().map(|g| g.1.len()).sum();
    let mut out = Vec::with_capacity(8 + groups.len() * 4 + samples * 10);
    out.push(VERSION);
    put_uvarint(
        &mut out,
        groups.iter().filter(|g| !g.1.is_empty()).count() as u64,
    );
    for (id, s) in groups.iter().filter(|g| !g.1.is_empty()) {
        put_uvarint(&mut out, id.0 as u64);
        put_uvarint(&mut out, s.len() as u64);
        let mut prev = 0i64;
        for (i, &(t, _)) in s.iter().enumerate() {
            let d = if i == 0 { t } else { t.wrapping_sub(prev) };
            put_uvarint(&mut out, zigzag(d));
            prev = t;
        }
        for &(_, v) in s {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a row written by [`encode`].
pub fn decode(data: &[u8]) -> Result<Vec<Group>, ChunkError> {
    let body = versioned_body(data, VERSION)?;
    let mut pos = 1;
    let groups = get_uvarint(body, &mut pos)?;
    // A group takes at least 11 bytes (id, count, a timestamp, a value).
    if groups > (body.len() / 11) as u64 {
        return Err(ChunkError::Corrupt("too many groups"));
    }
    let mut out = Vec::with_capacity(groups as usize);
    for _ in 0..groups {
        let id = get_uvarint(body, &mut pos)?;
        let n = get_uvarint(body, &mut pos)?;
        // Every sample takes at least 9 bytes.
        if n == 0 || n > ((body.len() - pos) / 9) as u64 || id > i64::MAX as u64 {
            return Err(ChunkError::Corrupt("bad group"));
        }
        let n = n as usize;
        let mut ts = Vec::with_capacity(n);
        let mut prev = 0i64;
        for i in 0..n {
            let d = unzigzag(get_uvarint(body, &mut pos)?);
            let t = if i == 0 { d } else { prev.wrapping_add(d) };
            ts.push(t);
            prev = t;
        }
        let values = body.get(pos..pos + n * 8).ok_or(ChunkError::Truncated)?;
        pos += n * 8;
        let s = ts
            .into_iter()
            .zip(values.chunks_exact(8))
            .map(|(t, b)| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (t, u64::from_le_bytes(a))
            })
            .collect();
        out.push((SeriesId(id as i64), s));
    }
    if pos != body.len() {
        return Err(ChunkError::Corrupt("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn groups() -> impl Strategy<Value = Vec<Group>> {
        prop::collection::vec(
            (
                0i64..i64::MAX,
                prop::collection::vec((any::<i64>(), any::<u64>()), 1..20),
            )
                .prop_map(|(id, s)| (SeriesId(id), s)),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn rows_round_trip_bit_for_bit(g in groups()) {
            prop_assert_eq!(decode(&encode(&g)).unwrap(), g);
        }

        #[test]
        fn damaged_rows_are_refused_never_a_panic(g in groups(), at in any::<usize>(), flip in 1u8..=255, cut in any::<usize>()) {
            let mut data = encode(&g);
            let i = at % data.len();
            data[i] ^= flip;
            prop_assert!(decode(&data).is_err());
            let data = encode(&g);
            let _ = decode(&data[..cut % data.len()]);
        }
    }

    #[test]
    fn empty_groups_are_left_out() {
        let g = vec![(SeriesId(1), vec![]), (SeriesId(2), vec![(5, 7)])];
        assert_eq!(
            decode(&encode(&g)).unwrap(),
            vec![(SeriesId(2), vec![(5, 7)])]
        );
    }
}
