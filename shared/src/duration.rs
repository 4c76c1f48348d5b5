//! Durations as Prometheus writes them (`1s`, `500ms`, `1h30m`, `2d`), used
//! in configs and in the query API. Parsing only; no clocks here.

use std::time::Duration;

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (use e.g. 500ms, 15s, 5m, 1h30m, 7d)")]
pub struct DurationError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses `[0-9]+(ms|s|m|h|d|w|y)` repeated, units in descending order, as
/// Prometheus's `model.ParseDuration` accepts them.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: s.chars().take(64).collect(),
        reason,
    };
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3600 * 1000),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("m", 60 * 1000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = s;
    let mut total: u64 = 0;
    let mut last_unit = None::<usize>;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(pos) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(err("unknown or missing unit"));
        };
        if last_unit.is_some_and(|l| pos <= l) {
            return Err(err("units must be in descending order, each once"));
        }
        last_unit = Some(pos);
        total = n
            .checked_mul(UNITS[pos].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| err("too large"))?;
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_durations_parse() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        for bad in [
            "",
            "5",
            "s",
            "1x",
            "1m1h",
            "1s1s",
            "-1s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
