//! Edits PromQL operators make to a series' label set: keep only some
//! labels, drop some, set or remove one, and Prometheus's text form of a
//! label set for error messages.
//!
//! Pure functions on [`Labels`]; nothing here decides *which* labels an
//! operator keeps, and nothing here evaluates or reads storage. An empty
//! value always means "absent", as in Prometheus.

use nines_shared::{Label, Labels, METRIC_NAME_LABEL};

/// `labels` restricted to the names in `names`.
pub(crate) fn keep_only(labels: &Labels, names: &[String]) -> Labels {
    let kept: Vec<Label> = labels
        .iter()
        .filter(|l| names.contains(&l.name))
        .cloned()
        .collect();
    Labels::from_unsorted(kept)
}

/// `labels` without the names in `names`.
pub(crate) fn drop_names(labels: &Labels, names: &[String]) -> Labels {
    let kept: Vec<Label> = labels
        .iter()
        .filter(|l| !names.contains(&l.name))
        .cloned()
        .collect();
    Labels::from_unsorted(kept)
}

/// `labels` without the names in `names` and without `__name__`, as
/// `ignoring(...)` and `without(...)` see a series.
pub(crate) fn drop_names_and_metric(labels: &Labels, names: &[String]) -> Labels {
    let kept: Vec<Label> = labels
        .iter()
        .filter(|l| l.name != METRIC_NAME_LABEL && !names.contains(&l.name))
        .cloned()
        .collect();
    Labels::from_unsorted(kept)
}

/// `labels` with `name` set to `value`, or removed when `value` is empty.
pub(crate) fn with_label(labels: &Labels, name: &str, value: &str) -> Labels {
    if value.is_empty() {
        return drop_names(labels, &[name.to_string()]);
    }
    let mut out = labels.clone();
    out.set(name, value);
    out
}

/// Prometheus's `labels.Labels.String()`: `{a="1", b="2"}`, `__name__`
/// included as an ordinary label, values quoted as Go's `strconv.Quote`
/// does for printable text.
pub(crate) fn prometheus_text(labels: &Labels) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|l| format!("{}={}", l.name, go_quote(&l.value)))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// A string in double quotes with Go's escapes for the characters that
/// need one.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keep_and_drop() {
        let l = Labels::new("up", [("a", "1"), ("b", "2")]);
        assert_eq!(keep_only(&l, &names(&["a", "zz"])).len(), 1);
        assert_eq!(keep_only(&l, &names(&["a"])).get("a"), Some("1"));
        let d = drop_names(&l, &names(&["a"]));
        assert_eq!((d.get("a"), d.metric_name()), (None, Some("up")));
        let d = drop_names_and_metric(&l, &names(&["a"]));
        assert_eq!((d.len(), d.get("b")), (1, Some("2")));
    }

    #[test]
    fn empty_value_removes() {
        let l = Labels::new("up", [("a", "1")]);
        assert_eq!(with_label(&l, "a", "").get("a"), None);
        assert_eq!(with_label(&l, "c", "3").get("c"), Some("3"));
        assert_eq!(with_label(&l, "a", "x").get("a"), Some("x"));
    }

    #[test]
    fn text_form_is_prometheus_string() {
        let l = Labels::new("up", [("a", "x\"y")]);
        assert_eq!(prometheus_text(&l), "{__name__=\"up\", a=\"x\\\"y\"}");
        assert_eq!(prometheus_text(&Labels::default()), "{}");
    }
}
