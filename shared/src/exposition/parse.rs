//! Reading the text exposition format 0.0.4 (what node_exporter and every
//! Prometheus client library serve): `# HELP`, `# TYPE`, and sample lines
//! `name{label="value",...} value [timestamp_ms]`. Bounded by the caller's
//! limits; every malformed line is an error naming the line. It never
//! fetches anything and never stores anything.

use crate::model::{Label, LabelLimits, Labels, METRIC_NAME_LABEL, MetricKind, MetricMetadata};

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// Labels, `__name__` included, sorted.
    pub labels: Labels,
    /// The value.
    pub value: f64,
    /// The explicit timestamp in ms, if the line had one.
    pub timestamp: Option<i64>,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Samples in order.
    pub samples: Vec<ParsedSample>,
    /// One entry per family with a `# TYPE` or `# HELP` line.
    pub metadata: Vec<MetricMetadata>,
}

/// Why an exposition could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// A line is not valid.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// More samples than the limit.
    #[error("more than {0} samples")]
    TooManySamples(usize),
}

/// Parses a whole exposition, refusing it if it has more than
/// `max_samples` samples or any invalid line.
pub fn parse(
    text: &str,
    max_samples: usize,
    limits: &LabelLimits,
) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |reason: String| ParseError::Line {
            line: line_no,
            reason,
        };
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            parse_comment(comment, &mut out.metadata).map_err(err)?;
            continue;
        }
        if out.samples.len() >= max_samples {
            return Err(ParseError::TooManySamples(max_samples));
        }
        let sample = parse_sample(line).map_err(err)?;
        sample
            .labels
            .validate(limits)
            .map_err(|e| ParseError::Line {
                line: line_no,
                reason: e.to_string(),
            })?;
        out.samples.push(sample);
    }
    Ok(out)
}

fn parse_comment(comment: &str, metadata: &mut Vec<MetricMetadata>) -> Result<(), String> {
    let comment = comment.trim_start();
    let (keyword, rest) = match comment.split_once([' ', '\t']) {
        Some(p) => p,
        None => return Ok(()),
    };
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(()); // any other comment
    }
    let rest = rest.trim_start();
    let (name, text) = match rest.split_once([' ', '\t']) {
        Some((n, t)) => (n, t.trim_start()),
        None => (rest, ""),
    };
    if !crate::model::is_valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?} in # {keyword}"));
    }
    let idx = match metadata.iter().position(|m| m.name == name) {
        Some(i) => i,
        None => {
            metadata.push(MetricMetadata {
                name: name.to_string(),
                kind: MetricKind::Unknown,
                help: String::new(),
                unit: String::new(),
            });
            metadata.len() - 1
        }
    };
    let m = &mut metadata[idx];
    if keyword == "HELP" {
        m.help = unescape_help(text);
    } else {
        m.kind = match text.trim() {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            "histogram" => MetricKind::Histogram,
            "summary" => MetricKind::Summary,
            "untyped" | "unknown" => MetricKind::Unknown,
            other => return Err(format!("unknown metric type {other:?}")),
        };
    }
    Ok(())
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_sample(line: &str) -> Result<ParsedSample, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or("sample line has no value")?;
    let name = &line[..name_end];
    if !crate::model::is_valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut labels = vec![Label {
        name: METRIC_NAME_LABEL.to_string(),
        value: name.to_string(),
    }];
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields.next().ok_or("sample line has no value")?;
    let value = parse_value(value_text).ok_or_else(|| format!("invalid value {value_text:?}"))?;
    let timestamp = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("invalid timestamp {t:?}"))?,
        ),
    };
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    let labels = Labels::from_unsorted(labels);
    Ok(ParsedSample {
        labels,
        value,
        timestamp,
    })
}

/// Parses `name="value",...}` and returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<Label>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let name = s[..eq].trim();
        if !crate::model::is_valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, o)) => {
                        value.push('\\');
                        value.push(o);
                    }
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if out.iter().any(|l| l.name == name) {
            return Err(format!("label {name:?} given twice"));
        }
        // An empty value means the label is absent, as in Prometheus.
        if !value.is_empty() {
            out.push(Label {
                name: name.to_string(),
                value,
            });
        }
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NODE: &str = "# HELP node_load1 1m load average.\n\
# TYPE node_load1 gauge\n\
node_load1 0.21\n\
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n\
# TYPE node_cpu_seconds_total counter\n\
node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12345.67\n\
node_cpu_seconds_total{cpu=\"0\",mode=\"user\",} 1e+03\n\
# TYPE http_request_duration_seconds histogram\n\
http_request_duration_seconds_bucket{le=\"+Inf\"} 3 1700000000000\n\
weird{path=\"a \\\"q\\\" \\\\ \\n b\",empty=\"\"} NaN\n";

    #[test]
    fn node_exporter_style_text_parses() {
        let e = parse(NODE, 100, &LabelLimits::default()).unwrap();
        assert_eq!(e.samples.len(), 5);
        assert_eq!(e.samples[0].labels.to_string(), "node_load1");
        assert_eq!(e.samples[0].value, 0.21);
        assert_eq!(e.samples[2].value, 1000.0);
        assert_eq!(e.samples[3].timestamp, Some(1_700_000_000_000));
        assert_eq!(e.samples[3].value, 3.0);
        assert_eq!(e.samples[4].labels.get("path"), Some("a \"q\" \\ \n b"));
        assert_eq!(e.samples[4].labels.get("empty"), None);
        assert!(e.samples[4].value.is_nan());
        let load = e.metadata.iter().find(|m| m.name == "node_load1").unwrap();
        assert_eq!(load.kind, MetricKind::Gauge);
        assert_eq!(load.help, "1m load average.");
        assert_eq!(e.metadata.len(), 3);
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, line) in [
            ("ok 1\nbad-name 1\n", 2),
            ("m{a=\"1\" 2\n", 1),
            ("m{a=1} 2\n", 1),
            ("m 1 2 3\n", 1),
            ("m one\n", 1),
            ("m{a=\"1\",a=\"2\"} 1\n", 1),
            ("# TYPE m wat\n", 1),
            ("m{__x=\"1\"} 1\n", 1),
        ] {
            match parse(text, 100, &LabelLimits::default()) {
                Err(ParseError::Line { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            parse("a 1\nb 2\nc 3\n", 2, &LabelLimits::default()).unwrap_err(),
            ParseError::TooManySamples(2)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = parse(&s, 1000, &LabelLimits::default());
        }
    }
}
