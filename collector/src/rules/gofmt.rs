//! Number formatting as Go's `fmt` and `strconv` write it, for alert
//! templates (`{{ $value }}`, `humanize`, `printf`) and the alerts API, so
//! messages read the same as under Prometheus. Pure functions, no I/O.

/// Decimal digits of `v` (no leading zeros) and the decimal point position:
/// `v = 0.d1d2d3... * 10^dp`. `prec` significant digits, or the shortest
/// round-tripping digits when `None`. `v` must be finite.
fn digits(v: f64, prec: Option<usize>) -> (String, i32) {
    let s = match prec {
        Some(p) => format!("{:.*e}", p.saturating_sub(1), v.abs()),
        None => format!("{:e}", v.abs()),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut d: String = mant.chars().filter(char::is_ascii_digit).collect();
    while d.len() > 1 && d.ends_with('0') {
        d.pop();
    }
    if d == "0" {
        return (d, 1);
    }
    (d, exp + 1)
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v == f64::INFINITY {
        Some("+Inf".into())
    } else if v == f64::NEG_INFINITY {
        Some("-Inf".into())
    } else {
        None
    }
}

fn sign(v: f64) -> &'static str {
    if v.is_sign_negative() && v != 0.0 {
        "-"
    } else {
        ""
    }
}

/// `%e` layout from digits: `d.ddde+XX`, keeping `frac` digits after the
/// point (`None`: all digits).
fn e_form(d: &str, dp: i32, frac: Option<usize>) -> String {
    let exp = if d == "0" { 0 } else { dp - 1 };
    let mut m = d[..1].to_string();
    let rest = &d[1..];
    let rest = match frac {
        Some(n) => format!("{rest:0<n$}"),
        None => rest.to_string(),
    };
    if !rest.is_empty() {
        m.push('.');
        m.push_str(&rest);
    }
    let es = if exp < 0 { '-' } else { '+' };
    format!("{m}e{es}{:02}", exp.abs())
}

/// `%f` layout from digits with `frac` digits after the point.
fn f_form(d: &str, dp: i32, frac: usize) -> String {
    let mut int = String::new();
    if dp <= 0 {
        int.push('0');
    } else {
        for i in 0..dp as usize {
            int.push(d.as_bytes().get(i).map_or('0', |&b| b as char));
        }
    }
    if frac == 0 {
        return int;
    }
    let mut f = String::new();
    for i in 0..frac as i32 {
        let idx = dp + i;
        f.push(if idx < 0 {
            '0'
        } else {
            d.as_bytes().get(idx as usize).map_or('0', |&b| b as char)
        });
    }
    format!("{int}.{f}")
}

/// Go's `%g` with an optional precision (`%v` of a float is `%g` shortest).
pub fn fmt_g(v: f64, prec: Option<usize>) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let prec = prec.map(|p| p.max(1));
    let (d, dp) = digits(v, prec);
    let nd = d.len() as i32;
    let eprec = match prec {
        None => 6,
        Some(p) => {
            let p = p as i32;
            if p > nd && nd >= dp { nd } else { p }
        }
    };
    // Go: shortest %g (and %v) switches to exponent form at exponent 6;
    // with a precision, at that many digits.
    let exp = if d == "0" { 0 } else { dp - 1 };
    let body = if exp < -4 || exp >= eprec {
        e_form(&d, dp, None)
    } else {
        f_form(&d, dp, (nd - dp).max(0) as usize)
    };
    format!("{}{body}", sign(v))
}

/// Go's `fmt.Sprint(float64)` (`%v`): shortest digits, exponent form below
/// 1e-4 and from 1e6 up.
pub fn fmt_v(v: f64) -> String {
    fmt_g(v, None)
}

/// Go's `%.<prec>f`.
pub fn fmt_f(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let s = format!("{:.*}", prec, v.abs());
    format!("{}{s}", sign(v))
}

/// Go's `%.<prec>e` (`None`: shortest, as `strconv.FormatFloat(v, 'e', -1,
/// 64)`, which the alerts API uses for values).
pub fn fmt_e(v: f64, prec: Option<usize>) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let (d, dp) = digits(v, prec.map(|p| p + 1));
    format!("{}{}", sign(v), e_form(&d, dp, prec))
}

/// Prometheus's `humanize`: SI prefixes, 4 significant digits.
pub fn humanize(mut v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return fmt_g(v, Some(4));
    }
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", fmt_g(v, Some(4)))
}

/// Prometheus's `humanize1024`: binary prefixes, 4 significant digits.
pub fn humanize1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return fmt_g(v, Some(4));
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", fmt_g(v, Some(4)))
}

/// Prometheus's `humanizeDuration`: seconds as `1d 2h 3m 4s`, or with SI
/// prefixes below one second.
pub fn humanize_duration(mut v: f64) -> String {
    if !v.is_finite() {
        return fmt_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", fmt_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        if days != 0 {
            return format!("{sign}{days}d {h}h {m}m {s}s");
        }
        if h != 0 {
            return format!("{sign}{h}h {m}m {s}s");
        }
        if m != 0 {
            return format!("{sign}{m}m {s}s");
        }
        return format!("{sign}{}s", fmt_g(v, Some(4)));
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", fmt_g(v, Some(4)))
}

/// Prometheus's `humanizePercentage`: a ratio as a percentage.
pub fn humanize_percentage(v: f64) -> String {
    format!("{}%", fmt_g(v * 100.0, Some(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_matches_go() {
        assert_eq!(fmt_v(1.0), "1");
        assert_eq!(fmt_v(0.5), "0.5");
        assert_eq!(fmt_v(1234567.0), "1.234567e+06");
        assert_eq!(fmt_v(100000.0), "100000");
        assert_eq!(fmt_v(1e6), "1e+06");
        assert_eq!(fmt_v(0.00001), "1e-05");
        assert_eq!(fmt_v(-2.5), "-2.5");
        assert_eq!(fmt_v(0.0), "0");
        assert_eq!(fmt_v(f64::NAN), "NaN");
    }

    #[test]
    fn g_e_f_match_go() {
        assert_eq!(fmt_g(1.5, Some(4)), "1.5");
        assert_eq!(fmt_g(12345.0, Some(4)), "1.234e+04");
        assert_eq!(fmt_g(100.0, Some(4)), "100");
        assert_eq!(fmt_g(0.0, Some(4)), "0");
        assert_eq!(fmt_e(1.0, None), "1e+00");
        assert_eq!(fmt_e(12.5, None), "1.25e+01");
        assert_eq!(fmt_e(0.0, None), "0e+00");
        assert_eq!(fmt_e(1.0, Some(2)), "1.00e+00");
        assert_eq!(fmt_f(2.0 / 3.0, 2), "0.67");
        assert_eq!(fmt_f(-1.0, 0), "-1");
    }

    #[test]
    fn humanize_like_prometheus() {
        assert_eq!(humanize(0.0), "0");
        assert_eq!(humanize(1234.0), "1.234k");
        assert_eq!(humanize(1_500_000.0), "1.5M");
        assert_eq!(humanize(0.0012), "1.2m");
        assert_eq!(humanize(12.0), "12");
        assert_eq!(humanize1024(2048.0), "2ki");
        assert_eq!(humanize_duration(0.0), "0s");
        assert_eq!(humanize_duration(5.5), "5.5s");
        assert_eq!(humanize_duration(90.0), "1m 30s");
        assert_eq!(humanize_duration(90061.0), "1d 1h 1m 1s");
        assert_eq!(humanize_duration(0.25), "250ms");
        assert_eq!(humanize_percentage(0.1234), "12.34%");
    }
}
