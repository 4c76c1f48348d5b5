//! What Prometheus 2.42's parser refuses that the parser we use accepts.
//!
//! `promql-parser` follows Prometheus 3: it knows functions 2.42 does not
//! (`mad_over_time`, `sort_by_label`, `info`, ...), quoted metric and label
//! names (`{"node_load1"}`, `by ("a")`), and durations without a unit
//! (`[300]`, `offset 1.5`) or with fractions (`[1.5m]`). Prometheus 2.42
//! answers all of these with a parse error (`bad_data`), so must we; a
//! client written against 2.42 must not get an answer it would not get
//! there. Checked after a successful parse: the source text for the
//! lexical differences, the syntax tree for the names.

use promql_parser::parser::{Expr, FunctionArgs};

/// `source` with every raw string (`` `...` ``) written as the double-quoted
/// string with the same value. In PromQL a backtick string is raw:
/// backslashes are themselves, so `` `C:\dir` `` is `C:\dir`; the parser
/// we use reads escape sequences in it (and refuses `\d`). Comments and
/// other strings are left alone.
pub(super) fn raw_strings_quoted(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains('`') {
        return std::borrow::Cow::Borrowed(source);
    }
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            '"' | '\'' => {
                let end = skip_string(&chars, i).min(chars.len());
                out.extend(&chars[i..end]);
                i = end;
            }
            '`' => {
                let Some(len) = chars[i + 1..].iter().position(|&c| c == '`') else {
                    // Unterminated: left for the parser to refuse.
                    out.extend(&chars[i..]);
                    break;
                };
                out.push('"');
                for &c in &chars[i + 1..i + 1 + len] {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
                out.push('"');
                i += len + 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Every function Prometheus 2.42 knows.
const FUNCTIONS_2_42: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Refuses what Prometheus 2.42 cannot parse in `source`, whose syntax
/// tree is `expr`; the message is the one Prometheus gives, or close.
pub(super) fn check(source: &str, expr: &Expr) -> Result<(), String> {
    check_source(source)?;
    check_names(expr)
}

/// Functions and aggregations 2.42 does not know. It reads the later
/// aggregations `limitk` and `limit_ratio` as calls of unknown functions.
fn check_names(expr: &Expr) -> Result<(), String> {
    match expr {
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if op == "limitk" || op == "limit_ratio" {
                return Err(format!("unknown function with name {op:?}"));
            }
            if let Some(p) = &a.param {
                check_names(p)?;
            }
            check_names(&a.expr)
        }
        Expr::Unary(u) => check_names(&u.expr),
        Expr::Binary(b) => {
            check_names(&b.lhs)?;
            check_names(&b.rhs)
        }
        Expr::Paren(p) => check_names(&p.expr),
        Expr::Subquery(s) => check_names(&s.expr),
        Expr::Call(c) => {
            if !FUNCTIONS_2_42.contains(&c.func.name) {
                return Err(format!("unknown function with name {:?}", c.func.name));
            }
            check_args(&c.args)
        }
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => Ok(()),
    }
}

fn check_args(args: &FunctionArgs) -> Result<(), String> {
    args.args.iter().try_for_each(|a| check_names(a))
}

/// Keywords whose parenthesised list holds label names.
const GROUPING_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The lexical differences: quoted names where 2.42 wants an identifier,
/// and durations 2.42 does not read (no unit, fractions, units out of
/// order, zero ranges).
fn check_source(source: &str) -> Result<(), String> {
    let chars: Vec<char> = source.chars().collect();
    let mut i = 0;
    // Inside `{...}` of a selector, or `(...)` after a grouping keyword.
    let mut in_braces = false;
    let mut in_grouping = false;
    // Whether the next token is where a name goes (after `{`, `(` of a
    // grouping, or `,` inside either).
    let mut expect_name = false;
    // The last identifier outside braces, for `by (`, `offset 5m`.
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            if expect_name {
                return Err(if in_braces {
                    "unexpected string in label matching, expected identifier or \"}\"".into()
                } else {
                    "unexpected string in grouping opts, expected label".into()
                });
            }
            i = skip_string(&chars, i);
            last_word.clear();
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == ':' || c == '.' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | ':' | '.'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            expect_name = false;
            if !in_braces && !in_grouping && last_word == "offset" {
                check_offset(&chars, start)?;
            }
            last_word = word;
            continue;
        }
        match c {
            '{' => {
                in_braces = true;
                expect_name = true;
            }
            '}' => {
                in_braces = false;
                expect_name = false;
            }
            '(' if !in_braces && GROUPING_KEYWORDS.contains(&last_word.as_str()) => {
                in_grouping = true;
                expect_name = true;
            }
            ')' if in_grouping => {
                in_grouping = false;
                expect_name = false;
            }
            ',' if in_braces || in_grouping => expect_name = true,
            '[' if !in_braces => {
                let end = chars[i..].iter().position(|&c| c == ']').map(|p| i + p);
                if let Some(end) = end {
                    let inside: String = chars[i + 1..end].iter().collect();
                    check_brackets(&inside)?;
                    i = end;
                }
            }
            '-' if !in_braces && last_word == "offset" => {
                // `offset -5m`: the duration follows.
                i += 1;
                continue;
            }
            _ => expect_name = false,
        }
        last_word.clear();
        i += 1;
    }
    Ok(())
}

/// The index just past the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// `offset <duration>`: the token starting at `start` must be a duration
/// with units.
fn check_offset(chars: &[char], start: usize) -> Result<(), String> {
    if !chars[start].is_ascii_digit() {
        return Ok(());
    }
    let token: String = chars[start..]
        .iter()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.'))
        .collect();
    match parse_duration(&token) {
        None if token.chars().all(|c| c.is_ascii_digit() || c == '.') => Err(format!(
            "unexpected number {token:?} in offset, expected duration"
        )),
        None => Err(format!("not a valid duration string: {token:?}")),
        Some(0) => Err("duration must be greater than 0".into()),
        Some(_) => Ok(()),
    }
}

/// `[range]` or `[range:step]` or `[range:]`.
fn check_brackets(inside: &str) -> Result<(), String> {
    let mut parts = inside.splitn(2, ':');
    let range = parts.next().unwrap_or("").trim();
    check_duration(range)?;
    if let Some(step) = parts.next() {
        let step = step.trim();
        if !step.is_empty() {
            check_duration(step)?;
        }
    }
    Ok(())
}

fn check_duration(d: &str) -> Result<(), String> {
    match parse_duration(d) {
        None if !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()) => {
            Err("missing unit character in duration".into())
        }
        None => Err(format!("not a valid duration string: {d:?}")),
        Some(0) => Err("duration must be greater than 0".into()),
        Some(_) => Ok(()),
    }
}

/// A duration as Prometheus 2.42 reads one (`model.ParseDuration`): one or
/// more integer-and-unit pairs, units y w d h m s ms in that order, each at
/// most once; in ms. None if it is not one.
pub(super) fn parse_duration(d: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if d.is_empty() {
        return None;
    }
    let mut rest = d;
    let mut next_unit = 0;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let letters = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let at = UNITS[next_unit..].iter().position(|(u, _)| *u == unit)? + next_unit;
        total = total.checked_add(n.checked_mul(UNITS[at].1)?)?;
        next_unit = at + 1;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(src: &str) -> Result<(), String> {
        let expr = promql_parser::parser::parse(src).map_err(|e| format!("parser: {e}"))?;
        check(src, &expr)
    }

    #[test]
    fn what_prometheus_2_42_parses_passes() {
        for ok in [
            "up",
            "rate(x[5m])",
            "rate(x[1h30m])",
            "max_over_time(rate(x[5m])[30m:1m])",
            "avg_over_time(x[10m:])",
            "x offset 5m",
            "x offset -1h",
            "x[5m] offset 1m30s @ 100",
            "sum by (job, instance) (x)",
            "sum(x) without (cpu)",
            "x * on(instance) group_left(release) y",
            "x{job=\"a\", instance=~\"b.*\"}",
            "x{job='[5]', l=`offset 1.5`}",
            "label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")",
            "holt_winters(x[5m], 0.5, 0.5)",
            "histogram_fraction(0, 1, x)",
            "day_of_year()",
            "x[1ms:]",
            "offset_total + 1",
            "x # a comment with \"quotes\" and [300]",
        ] {
            assert_eq!(verdict(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn what_prometheus_2_42_refuses_is_a_parse_error() {
        for (bad, want) in [
            (
                "mad_over_time(x[5m])",
                "unknown function with name \"mad_over_time\"",
            ),
            (
                "sum(sort_by_label(x, \"a\"))",
                "unknown function with name \"sort_by_label\"",
            ),
            ("x + info(y)", "unknown function with name \"info\""),
            ("{\"x\"}", "unexpected string in label matching"),
            ("{\"x\", job=\"a\"}", "unexpected string in label matching"),
            (
                "x{job=\"a\", \"b\"=\"c\"}",
                "unexpected string in label matching",
            ),
            ("sum by (\"a\") (x)", "unexpected string in grouping opts"),
            ("rate(x[300])", "missing unit character in duration"),
            ("x[5m:60]", "missing unit character in duration"),
            ("x[1.5m:]", "not a valid duration string: \"1.5m\""),
            ("x[30m1h:]", "not a valid duration string: \"30m1h\""),
            ("x offset 1.5", "unexpected number \"1.5\" in offset"),
            ("x offset -90", "unexpected number \"90\" in offset"),
            ("x offset 0s", "duration must be greater than 0"),
        ] {
            match verdict(bad) {
                // Some the parser refuses by itself; fine too.
                Err(e) => assert!(e.contains(want) || e.starts_with("parser:"), "{bad}: {e}"),
                Ok(()) => panic!("{bad}: accepted"),
            }
        }
    }

    #[test]
    fn raw_strings_become_equivalent_quoted_strings() {
        assert_eq!(raw_strings_quoted("up"), "up");
        assert_eq!(raw_strings_quoted(r"x{a=`C:\dir`}"), r#"x{a="C:\\dir"}"#);
        assert_eq!(
            raw_strings_quoted(r#"f(`a"b`, "`", '`')"#),
            r#"f("a\"b", "`", '`')"#
        );
        assert_eq!(raw_strings_quoted("x # `c:\\d`"), "x # `c:\\d`");
        assert_eq!(raw_strings_quoted("x{a=`1\n2`}"), "x{a=\"1\\n2\"}");
        assert_eq!(raw_strings_quoted("x{a=`open"), "x{a=`open");
        // The value the parser then reads is the raw one.
        let e = promql_parser::parser::parse(&raw_strings_quoted(
            r#"label_replace(x, "a", `\d+\.`, "", "")"#,
        ))
        .unwrap();
        assert!(e.to_string().contains(r"\\d+\\."), "{e}");
    }

    #[test]
    fn durations_as_prometheus_2_42_reads_them() {
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("1d2h3m4s5ms"), Some(93_784_005));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("30m1h"), None, "units out of order");
        assert_eq!(parse_duration("1h1h"), None, "unit twice");
        assert_eq!(parse_duration("1.5m"), None);
        assert_eq!(parse_duration("300"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            check_duration("0s"),
            Err("duration must be greater than 0".into())
        );
    }
}
