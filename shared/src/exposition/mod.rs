//! The Prometheus text exposition format 0.0.4. This file writes it
//! (`# HELP`, `# TYPE`, then the family's samples, each family in one
//! group) for the binaries' `/metrics`; [`parse`] reads it for scrapes.

pub mod parse;

use crate::model::{MetricKind, escape_label_value};
use std::fmt::Write;

/// The content type of a text exposition.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Formats a sample value as the text format and the query API write it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        // Shortest form that round-trips, never in exponent notation: what
        // Go's strconv.FormatFloat(v, 'f', -1, 64) gives Prometheus.
        format!("{v}")
    }
}

/// Writes `# HELP` and `# TYPE` for a family.
pub fn write_header(out: &mut String, name: &str, kind: MetricKind, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    // The text format spells an unknown type "untyped"; the metadata API
    // says "unknown".
    let word = match kind {
        MetricKind::Unknown => "untyped",
        k => k.as_str(),
    };
    let _ = writeln!(out, "# TYPE {name} {word}");
}

/// Writes one sample line.
pub fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_prometheus_writes_them() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }

    #[test]
    fn unknown_types_are_written_untyped() {
        let mut s = String::new();
        write_header(&mut s, "m", MetricKind::Unknown, "Help.");
        assert_eq!(s, "# HELP m Help.\n# TYPE m untyped\n");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        write_sample(&mut s, "m", &[("a", "x\"y\\z\n")], 2.0);
        assert_eq!(s, "m{a=\"x\\\"y\\\\z\\n\"} 2\n");
    }
}
