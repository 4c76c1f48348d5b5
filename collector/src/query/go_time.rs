//! The calendar arithmetic of Go's `time` package (Go 1.19, the compiler
//! Prometheus 2.42 is built with), for PromQL's date functions.
//!
//! Prometheus turns a sample value into a date with
//! `time.Unix(int64(v), 0).UTC()`. Go's float-to-int64 conversion on amd64
//! gives `math.MinInt64` for NaN, ±Inf and anything out of range, and Go's
//! date arithmetic wraps around silently for huge times; so `month(NaN)` is
//! 12 and `year(vector(1e18))` is 31688740476, not NaN. Emulating Go's
//! integer arithmetic (wrapping, as Go's int64 and uint64 do) reproduces
//! those answers for every input, not only for ordinary dates.

const SECONDS_PER_MINUTE: u64 = 60;
const SECONDS_PER_HOUR: u64 = 60 * SECONDS_PER_MINUTE;
const SECONDS_PER_DAY: u64 = 24 * SECONDS_PER_HOUR;
const SECONDS_PER_WEEK: u64 = 7 * SECONDS_PER_DAY;
const DAYS_PER_400_YEARS: u64 = 365 * 400 + 97;
const DAYS_PER_100_YEARS: u64 = 365 * 100 + 24;
const DAYS_PER_4_YEARS: u64 = 365 * 4 + 1;
/// Go's `absoluteZeroYear`.
const ABSOLUTE_ZERO_YEAR: i64 = -292_277_022_399;
/// Go's `absoluteToInternal`: `(absoluteZeroYear - 1) * 365.2425 * 86400`.
const ABSOLUTE_TO_INTERNAL: i64 = -9_223_371_966_579_724_800;
const INTERNAL_TO_ABSOLUTE: i64 = -ABSOLUTE_TO_INTERNAL;
/// Go's `unixToInternal`: seconds from year 1 to 1970.
const UNIX_TO_INTERNAL: i64 = (1969 * 365 + 1969 / 4 - 1969 / 100 + 1969 / 400) * 86_400;
const INTERNAL_TO_UNIX: i64 = -UNIX_TO_INTERNAL;
/// Go's `daysBefore`: days before the start of each month, non-leap year.
const DAYS_BEFORE: [u64; 13] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365];

/// Go's `int64(f)` as compiled for amd64: truncation toward zero, and
/// `i64::MIN` (the "integer indefinite" value) for NaN and out of range.
pub(super) fn go_int64(f: f64) -> i64 {
    // 2^63 is the first value out of range upwards; -2^63 is in range.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() || !(-TWO_63..TWO_63).contains(&f) {
        i64::MIN
    } else {
        f as i64
    }
}

/// A UTC date and time of day as Go's `time.Time` methods report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GoDate {
    pub year: i64,
    /// 1 to 12.
    pub month: u64,
    /// 1 to 31.
    pub day: u64,
    pub hour: u64,
    pub minute: u64,
    /// 0 (Sunday) to 6.
    pub weekday: u64,
    /// 1 to 366.
    pub year_day: u64,
    /// Days in the month, as Prometheus's `days_in_month` computes it:
    /// `32 - time.Date(year, month, 32, 0, 0, 0, 0, UTC).Day()`.
    pub days_in_month: u64,
}

/// `time.Unix(sec, 0).UTC()`, broken down.
pub(super) fn unix_date(sec: i64) -> GoDate {
    let abs = absolute(sec);
    let (year, month, day, yday) = abs_date(abs);
    GoDate {
        year,
        month,
        day,
        year_day: yday + 1,
        hour: (abs % SECONDS_PER_DAY) / SECONDS_PER_HOUR,
        minute: (abs % SECONDS_PER_HOUR) / SECONDS_PER_MINUTE,
        weekday: (abs.wrapping_add(SECONDS_PER_DAY) % SECONDS_PER_WEEK) / SECONDS_PER_DAY,
        days_in_month: 32u64.wrapping_sub(abs_date(absolute(date_unix(year, month, 32))).2),
    }
}

/// Go's `Time.abs` for a UTC time `sec` seconds after the Unix epoch.
fn absolute(sec: i64) -> u64 {
    sec.wrapping_add(UNIX_TO_INTERNAL)
        .wrapping_add(INTERNAL_TO_ABSOLUTE) as u64
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Go's `absDate(abs, true)`: (year, month, day, day of the year from 0).
fn abs_date(abs: u64) -> (i64, u64, u64, u64) {
    let mut d = abs / SECONDS_PER_DAY;
    let mut n = d / DAYS_PER_400_YEARS;
    let mut y = 400 * n;
    d -= DAYS_PER_400_YEARS * n;
    n = d / DAYS_PER_100_YEARS;
    n -= n >> 2;
    y += 100 * n;
    d -= DAYS_PER_100_YEARS * n;
    n = d / DAYS_PER_4_YEARS;
    y += 4 * n;
    d -= DAYS_PER_4_YEARS * n;
    n = d / 365;
    n -= n >> 2;
    y += n;
    d -= 365 * n;
    let year = (y as i64).wrapping_add(ABSOLUTE_ZERO_YEAR);
    let yday = d;
    let mut day = d;
    if is_leap(year) {
        if day > 31 + 29 - 1 {
            day -= 1;
        } else if day == 31 + 29 - 1 {
            return (year, 2, 29, yday);
        }
    }
    let mut month = day / 31;
    let end = DAYS_BEFORE[month as usize + 1];
    let begin = if day >= end {
        month += 1;
        end
    } else {
        DAYS_BEFORE[month as usize]
    };
    (year, month + 1, day - begin + 1, yday)
}

/// Go's `time.Date(year, month, day, 0, 0, 0, 0, time.UTC).Unix()` for a
/// month in 1..=12 and a positive day.
fn date_unix(year: i64, month: u64, day: u64) -> i64 {
    let mut d = days_since_epoch(year);
    d = d.wrapping_add(DAYS_BEFORE[month as usize - 1]);
    if is_leap(year) && month >= 3 {
        d = d.wrapping_add(1);
    }
    d = d.wrapping_add(day - 1);
    let abs = d.wrapping_mul(SECONDS_PER_DAY);
    (abs as i64).wrapping_add(ABSOLUTE_TO_INTERNAL.wrapping_add(INTERNAL_TO_UNIX))
}

/// Go's `daysSinceEpoch`.
fn days_since_epoch(year: i64) -> u64 {
    let mut y = year.wrapping_sub(ABSOLUTE_ZERO_YEAR) as u64;
    let mut n = y / 400;
    y -= 400 * n;
    let mut d = DAYS_PER_400_YEARS.wrapping_mul(n);
    n = y / 100;
    y -= 100 * n;
    d = d.wrapping_add(DAYS_PER_100_YEARS * n);
    n = y / 4;
    y -= 4 * n;
    d = d.wrapping_add(DAYS_PER_4_YEARS * n);
    d.wrapping_add(365 * y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (year, month, day, weekday, days in month, hour, minute).
    type Parts = (i64, u64, u64, u64, u64, u64, u64);

    fn parts(d: GoDate) -> Parts {
        (
            d.year,
            d.month,
            d.day,
            d.weekday,
            d.days_in_month,
            d.hour,
            d.minute,
        )
    }

    #[test]
    fn ordinary_dates() {
        // 2024-02-29T13:45:30Z, a Thursday.
        assert_eq!(
            parts(unix_date(1_709_214_330)),
            (2024, 2, 29, 4, 29, 13, 45)
        );
        assert_eq!(parts(unix_date(0)), (1970, 1, 1, 4, 31, 0, 0));
        // Before the epoch: 1969-12-31T23:59:59Z, a Wednesday.
        assert_eq!(parts(unix_date(-1)), (1969, 12, 31, 3, 31, 23, 59));
        assert_eq!(parts(unix_date(951_782_400)), (2000, 2, 29, 2, 29, 0, 0));
        assert_eq!(
            parts(unix_date(-2_203_977_600)).4,
            28,
            "1900 is no leap year"
        );
    }

    #[test]
    fn extreme_times_wrap_as_in_go() {
        // Answers of Prometheus 2.42 (Go 1.19, amd64) for year(), month(),
        // day_of_month(), day_of_week(), days_in_month(), hour() and
        // minute() of these values.
        let cases: [(f64, Parts); 9] = [
            (f64::NAN, (292_277_026_596, 12, 4, 0, 31, 15, 30)),
            (f64::INFINITY, (292_277_026_596, 12, 4, 0, 31, 15, 30)),
            (-1e19, (292_277_026_596, 12, 4, 0, 31, 15, 30)),
            (1e18, (31_688_740_476, 10, 23, 5, 31, 1, 46)),
            (-1e18, (-31_688_736_537, 3, 10, 2, 31, 22, 13)),
            (9.2e18, (291_536_396_232, 8, 31, 5, 31, 11, 33)),
            (-62_135_596_801.0, (0, 12, 31, 0, 31, 23, 59)),
            (1e12, (33_658, 9, 27, 5, 30, 1, 46)),
            (-1e17, (-3_168_871_881, 4, 27, 4, 30, 14, 13)),
        ];
        for (v, want) in cases {
            assert_eq!(parts(unix_date(go_int64(v))), want, "{v}");
        }
        // day_of_year(vector(NaN)) in Prometheus 2.42.
        assert_eq!(unix_date(go_int64(f64::NAN)).year_day, 339);
    }

    #[test]
    fn float_to_int_conversion_is_amd64s() {
        assert_eq!(go_int64(-1.5), -1);
        assert_eq!(go_int64(1.9), 1);
        assert_eq!(go_int64(f64::NAN), i64::MIN);
        assert_eq!(go_int64(f64::INFINITY), i64::MIN);
        assert_eq!(go_int64(f64::NEG_INFINITY), i64::MIN);
        assert_eq!(go_int64(9_223_372_036_854_775_808.0), i64::MIN);
        assert_eq!(go_int64(-9_223_372_036_854_775_808.0), i64::MIN);
        assert_eq!(go_int64(9.2e18), 9_200_000_000_000_000_000);
    }
}
