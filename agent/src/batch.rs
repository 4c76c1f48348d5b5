//! The batcher: turns a sampling round into a [`Batch`]. It adds the
//! `instance` and `job` labels, numbers each series once per stream (a
//! [`SeriesRef`]), attaches definitions and metadata the first time a series
//! or family appears, and gives each batch the next sequence number.
//!
//! It never sends anything; [`SeriesTable`] lets a shipper re-attach every
//! definition when a collector asks for them again.

use crate::samplers::Samples;
use nines_shared::{
    Batch, Labels, MetricMetadata, SampleGroup, Seq, SeriesDefinition, SeriesRef, StreamId,
    UnixMillis,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Every series and family this stream has defined, by ref.
#[derive(Default)]
pub struct SeriesTable {
    /// By the hash of the labels sent (with `instance` and `job`); the
    /// labels themselves are only in `encoded`, not kept twice. A round's
    /// observations remember their refs (see [`crate::samplers::Samples`]),
    /// so this is only searched for series they do not know.
    ids: HashMap<u64, Vec<SeriesRef>>,
    hasher: std::hash::RandomState,
    metadata: HashMap<String, MetricMetadata>,
    /// Every definition in the wire format, back to back by ref: a spool
    /// record copies them instead of encoding the labels again, and the
    /// labels are read back from them in the rare cases that need them
    /// (far smaller than the label sets themselves).
    encoded: Vec<u8>,
    /// Where each ref's definition starts in `encoded`.
    offsets: Vec<usize>,
    /// Each ref's family (an index into `families`), once it is known.
    family: Vec<Option<u32>>,
    /// Each family's metadata in the wire format, by index.
    families: Vec<Vec<u8>>,
    family_ids: HashMap<String, u32>,
    raw: Vec<u8>,
    /// Goes up whenever a definition or a family's metadata is added or
    /// changed, so a kept [`Section`] is known to still be right.
    generation: u64,
    /// The last spool record's definitions and metadata, compressed.
    section: Option<Section>,
    /// The refs the last spool record used, for its allocation.
    used: Vec<SeriesRef>,
}

/// The definitions and metadata part of a spool record, as one zstd
/// frame, and what it was made from.
struct Section {
    generation: u64,
    used: Vec<SeriesRef>,
    frame: Vec<u8>,
}

impl SeriesTable {
    /// Records a new definition; its ref is the next one.
    fn define(&mut self, labels: Labels) -> SeriesDefinition {
        let r = SeriesRef(self.offsets.len() as u32);
        self.generation += 1;
        let def = SeriesDefinition { series: r, labels };
        self.offsets.push(self.encoded.len());
        crate::encode::put(&mut self.encoded, &def);
        let family = def
            .labels
            .metric_name()
            .and_then(|m| self.family_of(m))
            .and_then(|m| self.family_ids.get(&m.name).copied());
        self.family.push(family);
        def
    }

    /// The labels of `r`, read back from its encoded definition.
    fn labels_of(&self, r: SeriesRef) -> Option<Labels> {
        let bytes = self.encoded_definition(r)?;
        postcard::from_bytes::<SeriesDefinition>(bytes)
            .ok()
            .map(|d| d.labels)
    }

    /// Keeps a family's metadata, as the latest round declared it.
    fn declare(&mut self, m: &MetricMetadata) {
        self.generation += 1;
        let mut bytes = Vec::new();
        crate::encode::put(&mut bytes, m);
        match self.family_ids.get(&m.name) {
            Some(&i) => self.families[i as usize] = bytes,
            None => {
                self.family_ids
                    .insert(m.name.clone(), self.families.len() as u32);
                self.families.push(bytes);
                // A new family can be a closer match for series already
                // defined (`x_total` itself rather than `x`): look again.
                self.family.iter_mut().for_each(|f| *f = None);
            }
        }
        self.metadata.insert(m.name.clone(), m.clone());
    }

    /// The definition of `r` in the wire format.
    fn encoded_definition(&self, r: SeriesRef) -> Option<&[u8]> {
        let i = r.0 as usize;
        let start = *self.offsets.get(i)?;
        let end = self
            .offsets
            .get(i + 1)
            .copied()
            .unwrap_or(self.encoded.len());
        Some(&self.encoded[start..end])
    }

    /// The family index of `r`, looked up again while unknown (its family
    /// may be declared after the series first appeared).
    fn family_index(&mut self, r: SeriesRef) -> Option<u32> {
        let i = r.0 as usize;
        if let Some(f) = self.family.get(i).copied().flatten() {
            return Some(f);
        }
        let labels = self.labels_of(r)?;
        let f = self
            .family_of(labels.metric_name()?)
            .and_then(|m| self.family_ids.get(&m.name).copied())?;
        self.family[i] = Some(f);
        Some(f)
    }

    /// The spool record of `batch`: the wire encoding of
    /// [`SeriesTable::with_all_definitions`], put together from the
    /// definitions and metadata encoded when they were first seen.
    ///
    /// It is three zstd frames, which decompress to their concatenation:
    /// stream, sequence number and time; the definitions and metadata;
    /// the sample groups. The middle one, by far the largest, is
    /// compressed again only when the series used or what the table knows
    /// changed since the last record; a steady host's records reuse it.
    pub fn spool_record(&mut self, batch: &Batch) -> Vec<u8> {
        let mut used = std::mem::take(&mut self.used);
        self.refs_used(batch, &mut used);
        let mut raw = std::mem::take(&mut self.raw);

        raw.clear();
        crate::encode::put(&mut raw, &batch.stream);
        crate::encode::put(&mut raw, &batch.seq);
        crate::encode::put(&mut raw, &batch.sent_at);
        let mut record = crate::encode::compress(&raw);

        let section = self
            .section
            .take()
            .filter(|s| s.generation == self.generation && s.used == used);
        let section = match section {
            Some(s) => s,
            None => {
                raw.clear();
                self.write_section(&used, &mut raw);
                Section {
                    generation: self.generation,
                    used: used.clone(),
                    frame: crate::encode::compress(&raw),
                }
            }
        };
        record.extend_from_slice(&section.frame);
        self.section = Some(section);

        raw.clear();
        crate::encode::put(&mut raw, &batch.groups);
        record.extend_from_slice(&crate::encode::compress(&raw));

        self.raw = raw;
        self.used = used;
        record
    }

    /// The definitions of `used` (sorted, unique) and the metadata of
    /// their families, as a spool record holds them.
    fn write_section(&mut self, used: &[SeriesRef], raw: &mut Vec<u8>) {
        crate::encode::put_len(raw, used.len());
        for &r in used {
            if let Some(bytes) = self.encoded_definition(r) {
                raw.extend_from_slice(bytes);
            }
        }
        self.write_families(used, raw);
    }

    /// The metadata of the families of `used`, in the order their first
    /// series come, as a count and the items.
    fn write_families(&mut self, used: &[SeriesRef], raw: &mut Vec<u8>) {
        let mut order = Vec::new();
        let mut seen = vec![false; self.families.len()];
        for &r in used {
            if let Some(f) = self.family_index(r) {
                if !std::mem::replace(&mut seen[f as usize], true) {
                    order.push(f);
                }
            }
        }
        crate::encode::put_len(raw, order.len());
        for f in order {
            raw.extend_from_slice(&self.families[f as usize]);
        }
    }

    /// The refs `batch` sends values of that this table defines, sorted
    /// and unique, into `used`.
    fn refs_used(&self, batch: &Batch, used: &mut Vec<SeriesRef>) {
        used.clear();
        used.extend(
            batch
                .groups
                .iter()
                .flat_map(|g| g.values.iter().map(|(r, _)| *r))
                .filter(|r| (r.0 as usize) < self.offsets.len()),
        );
        used.sort_unstable();
        used.dedup();
    }

    /// The uncompressed body of `batch` sent at `sent_at` with the
    /// definitions of the series it uses that are not in `known` (and,
    /// if there are any, the metadata of every family it uses): what
    /// [`SeriesTable::with_all_definitions`] stripped of `known` encodes
    /// to, put together from the encoded definitions rather than labels
    /// read back. Reuses `raw`'s allocation.
    pub(crate) fn body_without(
        &mut self,
        raw: Vec<u8>,
        batch: &Batch,
        known: Option<&HashSet<SeriesRef>>,
        sent_at: UnixMillis,
    ) -> Vec<u8> {
        let mut used = std::mem::take(&mut self.used);
        self.refs_used(batch, &mut used);
        let unknown = |r: &&SeriesRef| known.is_none_or(|k| !k.contains(r));
        let mut body = crate::encode::Body::start(raw, batch, sent_at);
        let n = used.iter().filter(unknown).count();
        body.count(n);
        for r in used.iter().filter(unknown) {
            if let Some(bytes) = self.encoded_definition(*r) {
                body.encoded(bytes);
            }
        }
        let mut families = Vec::new();
        if n == 0 {
            crate::encode::put_len(&mut families, 0);
        } else {
            self.write_families(&used, &mut families);
        }
        body.encoded(&families);
        self.used = used;
        body.finish(&batch.groups)
    }

    fn family_of(&self, metric: &str) -> Option<&MetricMetadata> {
        if let Some(m) = self.metadata.get(metric) {
            return Some(m);
        }
        ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .filter_map(|s| metric.strip_suffix(s))
            .find_map(|base| self.metadata.get(base))
    }

    /// The batch with a definition for every ref it uses and the metadata
    /// of their families: what to send when a collector has lost the refs.
    pub fn with_all_definitions(&self, batch: &Batch) -> Batch {
        let mut used: Vec<SeriesRef> = batch
            .groups
            .iter()
            .flat_map(|g| g.values.iter().map(|(r, _)| *r))
            .collect();
        used.sort_unstable();
        used.dedup();
        let definitions: Vec<SeriesDefinition> = used
            .iter()
            .filter_map(|r| {
                self.labels_of(*r)
                    .map(|labels| SeriesDefinition { series: *r, labels })
            })
            .collect();
        let mut families = HashSet::new();
        let metadata = definitions
            .iter()
            .filter_map(|d| d.labels.metric_name().and_then(|m| self.family_of(m)))
            .filter(|m| families.insert(m.name.clone()))
            .cloned()
            .collect();
        Batch {
            definitions,
            metadata,
            ..batch.clone()
        }
    }
}

/// Builds batches for one stream.
pub struct Batcher {
    /// Tells this batcher's refs cached in observations from another's.
    id: u32,
    stream: StreamId,
    next_seq: u64,
    instance: String,
    job: String,
    table: Arc<Mutex<SeriesTable>>,
}

impl Batcher {
    /// A batcher for a new stream of `agent_id`, starting now.
    pub fn new(agent_id: &str, instance: &str, job: &str) -> Self {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        Batcher {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream: StreamId {
                agent: agent_id.to_string(),
                epoch: UnixMillis::now(),
            },
            next_seq: 0,
            instance: instance.to_string(),
            job: job.to_string(),
            table: Arc::default(),
        }
    }

    /// The stream this batcher numbers.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The series table, for shippers that must re-send definitions.
    pub fn table(&self) -> Arc<Mutex<SeriesTable>> {
        self.table.clone()
    }

    /// One batch from one sampling round taken at `at`. Labels are copied
    /// only for series this stream has not seen yet.
    pub fn batch(&mut self, round: &Samples, at: UnixMillis) -> Batch {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let table = &mut *guard;
        let mut definitions = Vec::new();
        let mut metadata = Vec::new();
        for m in &round.metadata {
            let changed = table.metadata.get(&m.name) != Some(m);
            if changed {
                table.declare(m);
                metadata.push(m.clone());
            }
        }
        let mut values = Vec::with_capacity(round.observations.len());
        // By ref: whether this round has a value for it yet.
        let mut seen = vec![false; table.offsets.len()];
        for o in &round.observations {
            let r = match o.series.get(self.id) {
                Some(r) => r,
                None => {
                    let mut labels = o.labels.clone();
                    if labels.get("instance").is_none() {
                        labels.set("instance", &self.instance);
                    }
                    if labels.get("job").is_none() {
                        labels.set("job", &self.job);
                    }
                    // Two reported label sets can name one series (one
                    // with this instance spelled out): one ref for both.
                    let hash = std::hash::BuildHasher::hash_one(&table.hasher, &labels);
                    let known = table.ids.get(&hash).and_then(|refs| {
                        refs.iter()
                            .copied()
                            .find(|r| table.labels_of(*r).as_ref() == Some(&labels))
                    });
                    match known {
                        Some(r) => r,
                        None => {
                            let def = table.define(labels);
                            table.ids.entry(hash).or_default().push(def.series);
                            let r = def.series;
                            definitions.push(def);
                            r
                        }
                    }
                }
            };
            o.series.set(self.id, r);
            // A sampler reporting the same series twice in a round keeps
            // the first value: one value per series per timestamp.
            let i = r.0 as usize;
            if i >= seen.len() {
                seen.resize(i + 1, false);
            }
            if !std::mem::replace(&mut seen[i], true) {
                values.push((r, o.value));
            }
        }
        let seq = Seq(self.next_seq);
        self.next_seq += 1;
        Batch {
            stream: self.stream.clone(),
            seq,
            sent_at: at,
            definitions,
            metadata,
            groups: vec![SampleGroup { at, values }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_shared::MetricKind;

    fn round(v: f64) -> Samples {
        let mut s = Samples::default();
        s.family("node_load1", MetricKind::Gauge, "Load.", "");
        s.push("node_load1", &[], v);
        s.push(
            "node_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "idle")],
            3.0,
        );
        s
    }

    #[test]
    fn series_are_defined_once_and_sequence_numbers_increase() {
        let mut b = Batcher::new("agent-1", "host-a", "node");
        let first = b.batch(&round(1.0), UnixMillis(1000));
        assert_eq!(first.seq, Seq(0));
        assert_eq!(first.definitions.len(), 2);
        assert_eq!(first.metadata.len(), 1);
        let l = &first.definitions[0].labels;
        assert_eq!(l.get("instance"), Some("host-a"));
        assert_eq!(l.get("job"), Some("node"));
        let second = b.batch(&round(2.0), UnixMillis(2000));
        assert_eq!(second.seq, Seq(1));
        assert!(second.definitions.is_empty());
        assert!(second.metadata.is_empty());
        assert_eq!(second.groups[0].values.len(), 2);
    }

    #[test]
    fn a_series_reported_with_and_without_its_instance_has_one_ref() {
        let mut b = Batcher::new("agent-1", "host-a", "node");
        let mut s = Samples::default();
        s.push("up", &[], 1.0);
        s.push("up", &[("instance", "host-a")], 2.0);
        let first = b.batch(&s, UnixMillis(1000));
        assert_eq!(first.definitions.len(), 1);
        assert_eq!(first.groups[0].values, vec![(SeriesRef(0), 1.0)]);
        let second = b.batch(&s, UnixMillis(2000));
        assert!(second.definitions.is_empty());
        assert_eq!(second.groups[0].values, vec![(SeriesRef(0), 1.0)]);
    }

    /// A batcher after two rounds, the second adding two series, that
    /// round's samples and its batch.
    fn second_round_with_new_series() -> (Batcher, Samples, Batch) {
        let mut b = Batcher::new("agent-1", "host-a", "node");
        b.batch(&round(1.0), UnixMillis(1000));
        let mut s = round(2.0);
        s.family("x", MetricKind::Counter, "X.", "");
        s.push("x_total", &[], 1.0);
        s.push("y", &[], 1.0);
        let second = b.batch(&s, UnixMillis(2000));
        (b, s, second)
    }

    #[test]
    fn a_spool_record_is_the_batch_with_all_definitions() {
        use nines_shared::wire::{self, WireLimits};
        let (mut b, mut s, second) = second_round_with_new_series();
        let table = b.table();
        let mut t = table.lock().unwrap();
        let record = t.spool_record(&second);
        let decoded = wire::decode(&record, &WireLimits::default()).unwrap();
        let expected = t.with_all_definitions(&second);
        assert_eq!(decoded, expected);
        assert_eq!(decoded.definitions.len(), 4);
        assert_eq!(decoded.metadata.len(), 2);
        // A family declared later is the closer match from then on.
        drop(t);
        s.family("x_total", MetricKind::Gauge, "X total.", "");
        let third = b.batch(&s, UnixMillis(3000));
        let mut t = table.lock().unwrap();
        let decoded = wire::decode(&t.spool_record(&third), &WireLimits::default()).unwrap();
        assert_eq!(decoded, t.with_all_definitions(&third));
        assert!(decoded.metadata.iter().any(|m| m.name == "x_total"));
    }

    #[test]
    fn spool_records_of_a_steady_round_share_their_definitions_and_stay_right() {
        use nines_shared::wire::{self, WireLimits};
        let mut b = Batcher::new("agent-1", "host-a", "node");
        let table = b.table();
        let check = |b: &mut Batcher, s: &Samples, at: i64| {
            let batch = b.batch(s, UnixMillis(at));
            let mut t = table.lock().unwrap();
            let record = t.spool_record(&batch);
            let decoded = wire::decode(&record, &WireLimits::default()).unwrap();
            assert_eq!(decoded, t.with_all_definitions(&batch), "record at {at}");
            let frame = t.section.as_ref().map(|s| s.frame.clone()).unwrap();
            (record, frame)
        };
        let (_, first) = check(&mut b, &round(1.0), 1000);
        let (record, second) = check(&mut b, &round(2.0), 2000);
        assert_eq!(first, second, "the same series: the same section");
        assert!(
            record.windows(second.len()).any(|w| w == second.as_slice()),
            "the record holds the kept section"
        );
        // A new series, then a family whose help changed: made again.
        let mut s = round(3.0);
        s.push("node_load5", &[], 1.0);
        let (_, third) = check(&mut b, &s, 3000);
        assert_ne!(third, second);
        let mut s = Samples::default();
        s.family("node_load1", MetricKind::Gauge, "Load, said otherwise.", "");
        s.push("node_load1", &[], 4.0);
        s.push(
            "node_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "idle")],
            3.0,
        );
        s.push("node_load5", &[], 1.0);
        let (_, fourth) = check(&mut b, &s, 4000);
        assert_ne!(fourth, third);
        let (_, fifth) = check(&mut b, &s, 5000);
        assert_eq!(fifth, fourth);
    }

    #[test]
    fn a_body_from_the_table_is_the_full_batch_stripped_of_what_is_known() {
        use nines_shared::wire::{self, WireLimits};
        let (b, _, batch) = second_round_with_new_series();
        let table = b.table();
        let mut t = table.lock().unwrap();
        let full = t.with_all_definitions(&batch);
        let refs: Vec<SeriesRef> = full.definitions.iter().map(|d| d.series).collect();
        let known_sets: Vec<Option<HashSet<SeriesRef>>> = vec![
            None,
            Some(HashSet::new()),
            Some(refs[..2].iter().copied().collect()),
            Some(refs[1..].iter().copied().collect()),
            Some(refs.iter().copied().collect()),
        ];
        for known in &known_sets {
            let decode = |raw: Vec<u8>| {
                let body = crate::encode::compress(&raw);
                wire::decode(&body, &WireLimits::default()).unwrap()
            };
            let mine = decode(t.body_without(Vec::new(), &batch, known.as_ref(), UnixMillis(7)));
            let unknown: Vec<_> = full
                .definitions
                .iter()
                .filter(|d| known.as_ref().is_none_or(|k| !k.contains(&d.series)))
                .cloned()
                .collect();
            assert_eq!(mine.definitions, unknown, "{known:?}");
            let metadata = if unknown.is_empty() {
                vec![]
            } else {
                full.metadata.clone()
            };
            assert_eq!(mine.metadata, metadata, "{known:?}");
            assert_eq!(mine.groups, batch.groups);
            assert_eq!(mine.sent_at, UnixMillis(7));
            assert_eq!((mine.seq, &mine.stream), (batch.seq, &batch.stream));
        }
    }

    #[test]
    fn all_definitions_can_be_reattached() {
        let mut b = Batcher::new("agent-1", "host-a", "node");
        b.batch(&round(1.0), UnixMillis(1000));
        let second = b.batch(&round(2.0), UnixMillis(2000));
        let full = b.table().lock().unwrap().with_all_definitions(&second);
        assert_eq!(full.definitions.len(), 2);
        assert_eq!(full.metadata.len(), 1);
        assert_eq!(full.seq, second.seq);
    }
}
