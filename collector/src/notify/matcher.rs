//! Label matchers in Prometheus/Alertmanager syntax (`name="v"`, `name!="v"`,
//! `name=~"re"`, `name!~"re"`), as routes, inhibit rules and silences use
//! them. Regexes are anchored at both ends, as in Alertmanager. A label an
//! alert does not have matches as the empty string.
//!
//! Parsing never panics on input; a bad matcher says what is wrong with it.

use regex::Regex;
use std::collections::BTreeMap;
use std::fmt;

/// How a matcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The label name.
    pub name: String,
    /// The comparison.
    pub op: MatchOp,
    /// The value or regex as written.
    pub value: String,
    /// The anchored regex, for `=~` and `!~`.
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.op == o.op && self.value == o.value
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut quoted = String::with_capacity(self.value.len() + 2);
        for c in self.value.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                '\n' => quoted.push_str("\\n"),
                c => quoted.push(c),
            }
        }
        write!(f, "{}{}\"{quoted}\"", self.name, self.op.as_str())
    }
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

impl Matcher {
    /// A matcher from its parts; refuses a bad name or regex.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        if !valid_label_name(name) {
            return Err(format!("{name:?} is not a valid label name"));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("bad regex {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    /// Parses `name<op>value`, the value quoted (with `\"`, `\\`, `\n`
    /// escapes) or bare.
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let t = s.trim();
        let end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(t.len());
        let (name, rest) = t.split_at(end);
        if name.is_empty() {
            return Err(format!("matcher {s:?} does not start with a label name"));
        }
        let rest = rest.trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(format!(
                "matcher {s:?} has no operator (=, !=, =~ or !~) after {name:?}"
            ));
        };
        let rest = rest.trim();
        let value = if let Some(inner) = rest.strip_prefix('"') {
            let Some(inner) = inner.strip_suffix('"') else {
                return Err(format!("matcher {s:?}: unterminated quoted value"));
            };
            unquote(inner).map_err(|e| format!("matcher {s:?}: {e}"))?
        } else {
            if rest.contains('"') {
                return Err(format!("matcher {s:?}: stray quote in the value"));
            }
            rest.to_string()
        };
        Matcher::new(name, op, &value).map_err(|e| format!("matcher {s:?}: {e}"))
    }

    /// Whether `labels` satisfy the matcher.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// True for `=~` and `!~`.
    pub fn is_regex(&self) -> bool {
        matches!(self.op, MatchOp::Regex | MatchOp::NotRegex)
    }

    /// True for `=` and `=~`.
    pub fn is_equal(&self) -> bool {
        matches!(self.op, MatchOp::Equal | MatchOp::Regex)
    }
}

fn unquote(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some(o) => return Err(format!("unknown escape \\{o}")),
                None => return Err("value ends in a lone backslash".into()),
            },
            '"' => return Err("unescaped quote inside the value".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Whether every matcher matches.
pub fn all_match(ms: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    ms.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = Matcher::parse(&s);
        }

        #[test]
        fn a_printed_matcher_parses_back_the_same(
            name in "[a-zA-Z_][a-zA-Z0-9_]{0,10}",
            op in 0usize..2,
            value in "(.|\n){0,20}",
        ) {
            let op = [MatchOp::Equal, MatchOp::NotEqual][op];
            let m = Matcher::new(&name, op, &value).unwrap();
            let again = Matcher::parse(&m.to_string()).unwrap();
            prop_assert_eq!(again, m);
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_four_operators_parse_and_match() {
        let l = labels(&[("severity", "critical"), ("instance", "web-1")]);
        let m = Matcher::parse(r#"severity="critical""#).unwrap();
        assert_eq!(m.op, MatchOp::Equal);
        assert!(m.matches(&l));
        assert!(!Matcher::parse("severity!=critical").unwrap().matches(&l));
        assert!(Matcher::parse(r#"instance=~"web-.*""#).unwrap().matches(&l));
        // Anchored: a partial match is no match.
        assert!(!Matcher::parse(r#"instance=~"web""#).unwrap().matches(&l));
        assert!(
            Matcher::parse(r#"instance !~ "db-.*""#)
                .unwrap()
                .matches(&l)
        );
        // A missing label is the empty string.
        assert!(Matcher::parse(r#"team="""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#"team!~".+""#).unwrap().matches(&l));
    }

    #[test]
    fn quoted_values_unescape_and_display_round_trips() {
        let m = Matcher::parse(r#"summary="say \"hi\"\\""#).unwrap();
        assert_eq!(m.value, "say \"hi\"\\");
        let again = Matcher::parse(&m.to_string()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn bad_matchers_say_what_is_wrong() {
        for (input, want) in [
            ("", "label name"),
            ("=x", "label name"),
            ("severity", "no operator"),
            ("severity>\"x\"", "no operator"),
            ("severity=\"x", "unterminated"),
            ("a=~\"(\"", "bad regex"),
            ("a=\"x\\q\"", "unknown escape"),
            ("a=b\"c", "stray quote"),
            ("1a=\"x\"", "label name"),
        ] {
            let e = Matcher::parse(input).unwrap_err();
            assert!(e.contains(want), "{input:?}: {e}");
        }
    }
}
