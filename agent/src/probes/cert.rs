//! Reads one field from an X.509 certificate: when it stops being valid
//! (`notAfter`), for the certificate expiry gauge. A DER walker of a few
//! dozen lines instead of a general X.509 parser, since this is the only
//! field the agent needs (x509-parser would add nom, asn1-rs, der-parser
//! and oid-registry to a 2-core build). It never verifies anything: trust
//! decisions belong to rustls.

/// Why a certificate's `notAfter` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate: {0}")]
pub(crate) struct CertError(&'static str);

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0; // [0] EXPLICIT, constructed
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Splits one DER element off `input`: (tag, contents, what follows).
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertError> {
    let (&tag, rest) = input.split_first().ok_or(CertError("truncated"))?;
    if tag & 0x1f == 0x1f {
        // Certificates use no high-numbered tags up to notAfter.
        return Err(CertError("unexpected multi-byte tag"));
    }
    let (&first, rest) = rest.split_first().ok_or(CertError("truncated"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        // Long form: the low bits say how many length bytes follow. DER
        // forbids the indefinite form (0x80); four bytes is far beyond
        // any certificate.
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(CertError("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(CertError("truncated"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The next element, which must have tag `want`: (contents, what follows).
fn expect<'a>(
    input: &'a [u8],
    want: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertError> {
    let (tag, body, rest) = element(input)?;
    if tag != want {
        return Err(CertError(what));
    }
    Ok((body, rest))
}

/// The certificate's `notAfter` as Unix seconds (UTC).
///
/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
/// TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, ... }; Validity ::= SEQUENCE { notBefore,
/// notAfter } (RFC 5280 section 4.1).
pub(crate) fn not_after_unix(der: &[u8]) -> Result<i64, CertError> {
    let (cert, _) = expect(der, SEQUENCE, "not a SEQUENCE")?;
    let (tbs, _) = expect(cert, SEQUENCE, "no tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = element(rest)?.2;
    }
    let (_, rest) = expect(rest, INTEGER, "no serialNumber")?;
    let (_, rest) = expect(rest, SEQUENCE, "no signature algorithm")?;
    let (_, rest) = expect(rest, SEQUENCE, "no issuer")?;
    let (validity, _) = expect(rest, SEQUENCE, "no validity")?;
    let (_, _, after) = element(validity)?; // notBefore
    let (tag, time, _) = element(after)?;
    parse_time(tag, time)
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`, the only
/// forms RFC 5280 allows in certificates.
fn parse_time(tag: u8, text: &[u8]) -> Result<i64, CertError> {
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            // RFC 5280: YY >= 50 is 19YY, else 20YY.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        (UTC_TIME | GENERALIZED_TIME, _) => return Err(CertError("time not in the DER form")),
        _ => return Err(CertError("notAfter is not a time")),
    };
    if rest[10] != b'Z' {
        return Err(CertError("time not in UTC"));
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(CertError("time out of range"));
    }
    Ok(days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn digits(b: &[u8]) -> Result<i64, CertError> {
    b.iter().try_fold(0i64, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + (c - b'0') as i64)
        } else {
            Err(CertError("time has a non-digit"))
        }
    })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian). Counts
/// whole years, then months: certificate years are 1950..9999, so the
/// loop is at most a few thousand steps and runs once per handshake.
fn days_since_epoch(y: i64, m: i64, d: i64) -> i64 {
    let mut days = 0;
    if y >= 1970 {
        for year in 1970..y {
            days += if is_leap(year) { 366 } else { 365 };
        }
    } else {
        for year in y..1970 {
            days -= if is_leap(year) { 366 } else { 365 };
        }
    }
    for month in 1..m {
        days += days_in_month(y, month);
    }
    days + d - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a short- or long-form length.
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    /// A certificate skeleton: only the fields before validity are
    /// well-formed enough for the walker.
    fn cert(with_version: bool, not_after: (u8, &[u8])) -> Vec<u8> {
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(tlv(VERSION, &tlv(INTEGER, &[2])));
        }
        tbs.extend(tlv(INTEGER, &[1, 2, 3]));
        tbs.extend(tlv(SEQUENCE, &[0x06, 0x01, 0x2a]));
        // A long issuer, so lengths take the long form.
        tbs.extend(tlv(SEQUENCE, &[0x31; 300]));
        let mut validity = tlv(UTC_TIME, b"200101000000Z");
        validity.extend(tlv(not_after.0, not_after.1));
        tbs.extend(tlv(SEQUENCE, &validity));
        tbs.extend(tlv(SEQUENCE, &[])); // subject
        let mut c = tlv(SEQUENCE, &tbs);
        c.extend(tlv(SEQUENCE, &[]));
        c.extend(tlv(0x03, &[0]));
        tlv(SEQUENCE, &c)
    }

    #[test]
    fn utc_and_generalized_times() {
        // Values from `date -u -d ... +%s`.
        assert_eq!(
            not_after_unix(&cert(true, (UTC_TIME, b"490630000000Z"))),
            Ok(2_508_624_000)
        );
        assert_eq!(
            not_after_unix(&cert(false, (UTC_TIME, b"700101000001Z"))),
            Ok(1)
        );
        // 1950..1969 come before the epoch.
        assert_eq!(
            not_after_unix(&cert(true, (UTC_TIME, b"691231235959Z"))),
            Ok(-1)
        );
        assert_eq!(
            not_after_unix(&cert(true, (GENERALIZED_TIME, b"20510102000000Z"))),
            Ok(2_556_230_400)
        );
        // A leap day.
        assert_eq!(
            not_after_unix(&cert(true, (GENERALIZED_TIME, b"20240229123456Z"))),
            Ok(1_709_210_096)
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            cert(true, (UTC_TIME, b"491330000000Z")),     // month 13
            cert(true, (UTC_TIME, b"490230000000Z")),     // Feb 30
            cert(true, (UTC_TIME, b"4906300000Z")),       // no seconds
            cert(true, (UTC_TIME, b"490630000000+0100")), // not UTC
            cert(true, (GENERALIZED_TIME, b"20510102000000.5Z")),
            cert(true, (INTEGER, b"490630000000Z")),
            cert(true, (UTC_TIME, b"49063000000aZ")),
        ] {
            assert!(not_after_unix(&bad).is_err());
        }
        let good = cert(true, (UTC_TIME, b"490630000000Z"));
        for n in 0..good.len() {
            assert!(not_after_unix(&good[..n]).is_err(), "prefix {n}");
        }
        assert!(not_after_unix(&[0x30, 0x80, 0, 0]).is_err());
        assert!(not_after_unix(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(not_after_unix(&[0x1f, 0x01, 0]).is_err());
    }

    /// Certificates made by a real encoder, on both sides of 2050 where
    /// the encoding switches from UTCTime to GeneralizedTime.
    #[test]
    fn certificates_from_rcgen() {
        for (y, m, d, want) in [(2049, 6, 30, 2_508_624_000), (2051, 1, 2, 2_556_230_400)] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = rcgen::KeyPair::generate().unwrap();
            let c = params.self_signed(&key).unwrap();
            assert_eq!(not_after_unix(c.der()), Ok(want));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = not_after_unix(&bytes);
        }
    }
}
