//! The routing tree, as Alertmanager walks it: an alert goes down into the
//! first child whose matchers it satisfies (and on to later siblings while
//! the matched child says `continue`); where no child matches, the route
//! itself takes the alert. Children inherit receiver, `group_by` and timers.
//!
//! Pure: no clock, no I/O.

use super::matcher::{Matcher, all_match};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a route splits alerts into groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// By these labels (sorted).
    Labels(Vec<String>),
    /// By every label (`group_by = ["..."]`): one group per alert.
    All,
}

/// One node of the tree.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique number in the tree (depth first).
    pub id: usize,
    /// Alertmanager-style key: `{}` for the root, `{}/{matchers}` below.
    pub key: String,
    /// Receiver name.
    pub receiver: String,
    /// Matchers an alert must satisfy.
    pub matchers: Vec<Matcher>,
    /// Grouping.
    pub group_by: GroupBy,
    /// Wait before a new group's first notification.
    pub group_wait: Duration,
    /// Wait between notifications of a group.
    pub group_interval: Duration,
    /// Wait before repeating an unchanged notification.
    pub repeat_interval: Duration,
    /// Go on to later siblings after matching.
    pub continue_: bool,
    /// Children.
    pub routes: Vec<Route>,
}

impl Route {
    /// The values a root inherits from: Alertmanager's defaults.
    pub fn root_defaults() -> Route {
        Route {
            id: 0,
            key: String::new(),
            receiver: String::new(),
            matchers: Vec::new(),
            group_by: GroupBy::Labels(Vec::new()),
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
            continue_: false,
            routes: Vec::new(),
        }
    }

    /// The routes that take an alert with `labels` (empty when this route
    /// does not match).
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<&Route> {
        if !all_match(&self.matchers, labels) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for child in &self.routes {
            let found = child.matching(labels);
            if found.is_empty() {
                continue;
            }
            out.extend(found);
            if !child.continue_ {
                break;
            }
        }
        if out.is_empty() {
            out.push(self);
        }
        out
    }

    /// The labels that name the alert's group on this route.
    pub fn group_labels(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        match &self.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => names
                .iter()
                .filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
        }
    }

    /// Every route of the tree, depth first.
    pub fn all(&self) -> Vec<&Route> {
        let mut v = vec![self];
        for c in &self.routes {
            v.extend(c.all());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(receiver: &str, matchers: &[&str], cont: bool, routes: Vec<Route>) -> Route {
        Route {
            receiver: receiver.into(),
            matchers: matchers
                .iter()
                .map(|m| Matcher::parse(m).unwrap())
                .collect(),
            continue_: cont,
            routes,
            ..Route::root_defaults()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn receivers(r: &Route, l: &[(&str, &str)]) -> Vec<String> {
        r.matching(&labels(l))
            .iter()
            .map(|r| r.receiver.clone())
            .collect()
    }

    #[test]
    fn first_matching_child_wins_unless_it_continues() {
        let tree = route(
            "default",
            &[],
            false,
            vec![
                route("pager", &[r#"severity="critical""#], true, vec![]),
                route(
                    "team",
                    &[r#"team=~"db|web""#],
                    false,
                    vec![route("db", &[r#"team="db""#], false, vec![])],
                ),
                route("never", &[r#"team="web""#], false, vec![]),
            ],
        );
        assert_eq!(receivers(&tree, &[("severity", "warning")]), ["default"]);
        assert_eq!(receivers(&tree, &[("severity", "critical")]), ["pager"]);
        assert_eq!(
            receivers(&tree, &[("severity", "critical"), ("team", "db")]),
            ["pager", "db"]
        );
        // The child matched but none of its children: the child takes it.
        assert_eq!(receivers(&tree, &[("team", "web")]), ["team"]);
    }

    #[test]
    fn group_labels_pick_the_group_by_labels_that_exist() {
        let mut r = route("x", &[], false, vec![]);
        r.group_by = GroupBy::Labels(vec!["alertname".into(), "instance".into()]);
        let l = labels(&[("alertname", "A"), ("job", "j")]);
        assert_eq!(r.group_labels(&l), labels(&[("alertname", "A")]));
        r.group_by = GroupBy::All;
        assert_eq!(r.group_labels(&l), l);
    }
}
