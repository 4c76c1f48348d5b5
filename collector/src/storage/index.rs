//! The in-memory series index: every series' labels, a reverse map from a
//! label set to its id, and postings (label name -> value -> series ids) so a
//! selector finds its series without scanning all of them. Rebuilt from
//! SQLite at start; only the writer thread adds to it, after a commit.
//!
//! It also remembers, for series that a remote_write request named and
//! that were checked under this process's limits, the hash of their label
//! pairs ([`pairs_hash`]), so a request naming a known series is resolved
//! from the bytes on the wire without building its labels (the pairs are
//! compared with the stored labels: a hash never decides alone).

use nines_shared::Labels;
use promql_parser::label::{Matcher, Matchers};
use std::collections::{BTreeSet, HashMap};

/// The collector's id for a series, as stored in SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesId(pub i64);

/// Series labels and postings.
#[derive(Default)]
pub struct Index {
    labels: SeriesMap<Labels>,
    ids: HashMap<Labels, SeriesId>,
    postings: HashMap<String, HashMap<String, Vec<SeriesId>>>,
    /// [`pairs_hash`] of checked label sets -> their series.
    by_pairs: HashMap<u64, SeriesId, BuildSeriesIdHasher>,
}

/// The hash of a label set given as (name, value) byte pairs in order:
/// the same for a [`Labels`] and for the pairs of a remote_write series
/// that names it.
pub fn pairs_hash<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    // FNV-1a over lengths and bytes (fast for short strings, stable), then
    // a finalizer: FNV's low bits depend only on the inputs' low bits, and
    // the map picks buckets by them.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in (b.len() as u32).to_le_bytes().iter().chain(b) {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (n, v) in pairs {
        eat(n);
        eat(v);
    }
    mix(h)
}

/// Spreads every bit of `h` over the whole word (murmur3's fmix64).
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A map keyed by series id, hashed by one multiplication rather than
/// SipHash: the writer looks series up several times per sample batch,
/// and ids are not chosen by senders.
pub type SeriesMap<V> = HashMap<SeriesId, V, BuildSeriesIdHasher>;

/// Builds [`SeriesIdHasher`]s.
#[derive(Default, Clone, Copy, Debug)]
pub struct BuildSeriesIdHasher;

impl std::hash::BuildHasher for BuildSeriesIdHasher {
    type Hasher = SeriesIdHasher;
    fn build_hasher(&self) -> SeriesIdHasher {
        SeriesIdHasher(0)
    }
}

/// Hashes a series id (or any integer key) by mixing its bits.
#[derive(Default, Clone, Copy, Debug)]
pub struct SeriesIdHasher(u64);

impl std::hash::Hasher for SeriesIdHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_i64(&mut self, v: i64) {
        self.0 ^= v as u64;
    }
}

/// Finds a remembered series by its label pairs and their hash.
pub type PairsLookup<'a> = dyn Fn(u64, &[(&[u8], &[u8])]) -> Option<SeriesId> + 'a;

/// The pairs of a label set, for [`pairs_hash`].
pub fn label_pairs(labels: &Labels) -> impl Iterator<Item = (&[u8], &[u8])> {
    labels
        .iter()
        .map(|l| (l.name.as_bytes(), l.value.as_bytes()))
}

impl Index {
    /// Number of series.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when no series is known.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The id of a label set, if known.
    pub fn id_of(&self, labels: &Labels) -> Option<SeriesId> {
        self.ids.get(labels).copied()
    }

    /// The series whose labels are exactly `pairs` (names and values, in
    /// order), if it was remembered with [`Index::remember`].
    pub fn id_of_pairs(&self, hash: u64, pairs: &[(&[u8], &[u8])]) -> Option<SeriesId> {
        let id = *self.by_pairs.get(&hash)?;
        let labels = self.labels.get(&id)?;
        let same = labels.len() == pairs.len()
            && labels
                .iter()
                .zip(pairs)
                .all(|(l, (n, v))| l.name.as_bytes() == *n && l.value.as_bytes() == *v);
        same.then_some(id)
    }

    /// Remembers a series named by a checked label set, so
    /// [`Index::id_of_pairs`] finds it.
    pub fn remember(&mut self, hash: u64, id: SeriesId) {
        self.by_pairs.insert(hash, id);
    }

    /// The labels of a series.
    pub fn labels_of(&self, id: SeriesId) -> Option<&Labels> {
        self.labels.get(&id)
    }

    /// Adds a series (ids ascend, so postings stay sorted when appended).
    pub fn insert(&mut self, id: SeriesId, labels: Labels) {
        if self.labels.contains_key(&id) {
            return;
        }
        for l in labels.iter() {
            let list = self
                .postings
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default();
            match list.last() {
                Some(last) if *last > id => {
                    let pos = list.partition_point(|x| *x < id);
                    list.insert(pos, id);
                }
                _ => list.push(id),
            }
        }
        self.ids.insert(labels.clone(), id);
        self.labels.insert(id, labels);
    }

    /// Series matching a selector: every matcher of the main group, or every
    /// matcher of one of the `or` groups.
    pub fn select(&self, matchers: &Matchers) -> Vec<SeriesId> {
        if matchers.or_matchers.is_empty() {
            return self.select_all_of(&matchers.matchers);
        }
        let mut out = BTreeSet::new();
        for group in &matchers.or_matchers {
            out.extend(self.select_all_of(group));
        }
        out.into_iter().collect()
    }

    fn select_all_of(&self, matchers: &[Matcher]) -> Vec<SeriesId> {
        // Start from the matchers that cannot match an absent label: their
        // postings bound the candidates. The others only filter.
        let mut candidates: Option<Vec<SeriesId>> = None;
        for m in matchers.iter().filter(|m| !m.is_match("")) {
            let ids = self.postings_matching(m);
            candidates = Some(match candidates {
                None => ids,
                Some(c) => intersect(&c, &ids),
            });
            if candidates.as_ref().is_some_and(Vec::is_empty) {
                return Vec::new();
            }
        }
        let candidates = candidates.unwrap_or_else(|| {
            let mut all: Vec<SeriesId> = self.labels.keys().copied().collect();
            all.sort_unstable();
            all
        });
        candidates
            .into_iter()
            .filter(|id| {
                let labels = &self.labels[id];
                matchers
                    .iter()
                    .all(|m| m.is_match(labels.get(&m.name).unwrap_or("")))
            })
            .collect()
    }

    fn postings_matching(&self, m: &Matcher) -> Vec<SeriesId> {
        let Some(values) = self.postings.get(&m.name) else {
            return Vec::new();
        };
        if let promql_parser::label::MatchOp::Equal = m.op {
            return values.get(&m.value).cloned().unwrap_or_default();
        }
        let mut out: Vec<SeriesId> = values
            .iter()
            .filter(|(v, _)| m.is_match(v))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every label name in use, sorted.
    pub fn label_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.postings.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every value of a label, sorted.
    pub fn label_values(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .postings
            .get(name)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn intersect(a: &[SeriesId], b: &[SeriesId]) -> Vec<SeriesId> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(q: &str) -> Matchers {
        match promql_parser::parser::parse(q).unwrap() {
            promql_parser::parser::Expr::VectorSelector(vs) => {
                let mut m = vs.matchers.clone();
                if let Some(name) = vs.name {
                    m.matchers.push(Matcher::new(
                        promql_parser::label::MatchOp::Equal,
                        "__name__",
                        &name,
                    ));
                }
                m
            }
            other => panic!("not a selector: {other:?}"),
        }
    }

    fn index() -> Index {
        let mut ix = Index::default();
        ix.insert(
            SeriesId(1),
            Labels::new("up", [("job", "node"), ("instance", "a")]),
        );
        ix.insert(
            SeriesId(2),
            Labels::new("up", [("job", "node"), ("instance", "b")]),
        );
        ix.insert(SeriesId(3), Labels::new("up", [("instance", "c")]));
        ix.insert(SeriesId(4), Labels::new("load", [("job", "node")]));
        ix
    }

    #[test]
    fn all_four_matchers_select_as_prometheus_does() {
        let ix = index();
        let ids = |q| ix.select(&selector(q));
        assert_eq!(ids(r#"up{job="node"}"#), vec![SeriesId(1), SeriesId(2)]);
        assert_eq!(ids(r#"up{job!="node"}"#), vec![SeriesId(3)]);
        assert_eq!(
            ids(r#"up{instance=~"a|c"}"#),
            vec![SeriesId(1), SeriesId(3)]
        );
        assert_eq!(ids(r#"up{instance!~"a|c"}"#), vec![SeriesId(2)]);
        // An empty value matches series without the label.
        assert_eq!(ids(r#"up{job=""}"#), vec![SeriesId(3)]);
        assert_eq!(
            ids(r#"{__name__=~"up|load",job="node"}"#),
            vec![SeriesId(1), SeriesId(2), SeriesId(4)]
        );
        assert!(ids(r#"nothing"#).is_empty());
    }

    #[test]
    fn label_names_and_values_are_sorted() {
        let ix = index();
        assert_eq!(ix.label_names(), vec!["__name__", "instance", "job"]);
        assert_eq!(ix.label_values("instance"), vec!["a", "b", "c"]);
    }
}
