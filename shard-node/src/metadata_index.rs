//! An in-memory index over a big partition's metadata values, so that a filtered search computes
//! the labels its filter lets through from lookups rather than by reading every memory's
//! metadata.
//!
//! For every path a memory's metadata answers (each key, and each dotted path into nested
//! objects, valued as the filter language's `lookup` values it) the index keeps the memory's label
//! under that path as present, and under its value when the value is a scalar: strings and
//! numbers in ordered maps (equality and ranges), `true`, `false` and `null` in their own lists.
//! [`MetadataIndex::matching`] answers a filter exactly from those lists, or says it cannot (an
//! array or object compared whole, `$contains`, or numbers too large for an `f64` key to tell
//! apart) and the caller reads the metadata instead. Like the vector and keyword indexes it is
//! derived from the stored memories and changed in the same step as each write.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound as Edge;

use memring_common::api::{Bound, FieldOp, MetadataFilter, lookup};
use serde_json::{Map, Number, Value};

use crate::labels::LabelSet;

/// Integers beyond this (2^53) are not all exact as `f64` keys.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// A number as an ordered map key (`-0.0` is `0.0`; JSON has no NaN).
#[derive(Debug, Clone, Copy)]
struct Num(f64);

impl PartialEq for Num {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Num {}
impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Num {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The key of a number, `None` when an `f64` cannot hold it exactly enough to compare as the
/// filter language does (integers beyond 2^53).
fn num_key(n: &Number) -> Option<Num> {
    let x = n.as_f64()?;
    if x.abs() >= EXACT_INTEGERS && (n.is_i64() || n.is_u64()) {
        return None;
    }
    Some(Num(if x == 0.0 { 0.0 } else { x }))
}

/// Labels, ascending, without duplicates.
type Labels = Vec<u64>;

fn add(list: &mut Labels, label: u64) {
    if let Err(at) = list.binary_search(&label) {
        list.insert(at, label);
    }
}

/// Takes `label` out; true when the list is left empty.
fn take(list: &mut Labels, label: u64) -> bool {
    if let Ok(at) = list.binary_search(&label) {
        list.remove(at);
    }
    list.is_empty()
}

/// One path's values.
#[derive(Debug, Default)]
struct FieldIndex {
    present: Labels,
    nulls: Labels,
    trues: Labels,
    falses: Labels,
    numbers: BTreeMap<Num, Labels>,
    strings: BTreeMap<String, Labels>,
    /// Memories whose number here has no exact key: numeric conditions here go to the scan.
    wide: usize,
}

impl FieldIndex {
    fn change(&mut self, label: u64, value: &Value, adding: bool) {
        let edit = |list: &mut Labels| {
            if adding {
                add(list, label);
            } else {
                take(list, label);
            }
        };
        edit(&mut self.present);
        match value {
            Value::Null => edit(&mut self.nulls),
            Value::Bool(true) => edit(&mut self.trues),
            Value::Bool(false) => edit(&mut self.falses),
            Value::Number(n) => match num_key(n) {
                Some(key) if adding => add(self.numbers.entry(key).or_default(), label),
                Some(key) => {
                    if self.numbers.get_mut(&key).is_some_and(|list| take(list, label)) {
                        self.numbers.remove(&key);
                    }
                }
                None if adding => self.wide += 1,
                None => self.wide = self.wide.saturating_sub(1),
            },
            Value::String(s) if adding => add(self.strings.entry(s.clone()).or_default(), label),
            Value::String(s) => {
                if self.strings.get_mut(s).is_some_and(|list| take(list, label)) {
                    self.strings.remove(s);
                }
            }
            Value::Array(_) | Value::Object(_) => {}
        }
    }
}

/// Every path `metadata` answers, each once, with the value `lookup` finds there.
fn paths(metadata: &Map<String, Value>) -> Vec<(String, &Value)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack: Vec<(String, &Value)> = metadata.iter().map(|(k, v)| (k.clone(), v)).collect();
    while let Some((path, walked)) = stack.pop() {
        if let Value::Object(children) = walked {
            stack.extend(children.iter().map(|(k, v)| (format!("{path}.{k}"), v)));
        }
        if seen.insert(path.clone())
            && let Some(value) = lookup(metadata, &path)
        {
            out.push((path, value));
        }
    }
    out
}

/// One partition's metadata index.
#[derive(Debug, Default)]
pub struct MetadataIndex {
    /// Every indexed memory.
    all: LabelSet,
    fields: HashMap<String, FieldIndex>,
}

impl MetadataIndex {
    /// Indexes memory `label` with `metadata` (remove its old metadata first).
    pub fn insert(&mut self, label: u64, metadata: &Map<String, Value>) {
        self.all.insert(label);
        for (path, value) in paths(metadata) {
            self.fields.entry(path).or_default().change(label, value, true);
        }
    }

    /// Forgets memory `label`, which was indexed with `metadata`.
    pub fn remove(&mut self, label: u64, metadata: &Map<String, Value>) {
        self.all.remove(label);
        for (path, value) in paths(metadata) {
            if let Some(field) = self.fields.get_mut(&path) {
                field.change(label, value, false);
                if field.present.is_empty() && field.wide == 0 {
                    self.fields.remove(&path);
                }
            }
        }
    }

    /// Every indexed label.
    pub fn all(&self) -> &LabelSet {
        &self.all
    }

    /// The labels whose metadata passes `filter`, or `None` when the index cannot tell exactly.
    pub fn matching(&self, filter: &MetadataFilter) -> Option<LabelSet> {
        match filter {
            MetadataFilter::All(parts) => {
                // Bounds on one number field (`{"n": {"$gte": 1, "$lt": 5}}`) are read as one
                // range: each half alone would gather most of the partition only to intersect.
                let mut ranges: Vec<(&str, Edge<Num>, Edge<Num>)> = Vec::new();
                let mut sets = Vec::with_capacity(parts.len());
                for part in parts {
                    match numeric_edges(part) {
                        Some((path, low, high)) => match ranges.iter_mut().find(|r| r.0 == path) {
                            Some(range) => {
                                range.1 = tighter(range.1, low, Ordering::Greater);
                                range.2 = tighter(range.2, high, Ordering::Less);
                            }
                            None => ranges.push((path, low, high)),
                        },
                        None => sets.push(self.matching(part)?),
                    }
                }
                for (path, low, high) in ranges {
                    sets.push(self.numbers_between(self.fields.get(path), low, high)?);
                }
                sets.sort_by_key(LabelSet::len);
                if sets.is_empty() {
                    return Some(self.all.clone());
                }
                let mut out = sets.remove(0);
                for set in &sets {
                    out.intersect(set);
                }
                Some(out)
            }
            MetadataFilter::Any(parts) => {
                let mut out = LabelSet::new();
                for part in parts {
                    out.unite(&self.matching(part)?);
                }
                Some(out)
            }
            MetadataFilter::Not(part) => Some(self.complement(&self.matching(part)?)),
            MetadataFilter::Field { path, op } => self.field(path, op),
        }
    }

    fn complement(&self, set: &LabelSet) -> LabelSet {
        let mut out = self.all.clone();
        out.subtract(set);
        out
    }

    fn field(&self, path: &str, op: &FieldOp) -> Option<LabelSet> {
        let field = self.fields.get(path);
        let of = |list: &Labels| LabelSet::from_labels(list.iter().copied());
        Some(match op {
            FieldOp::Eq(value) => self.equal(field, value)?,
            FieldOp::Ne(value) => self.complement(&self.equal(field, value)?),
            FieldOp::In(values) => {
                let mut out = LabelSet::new();
                for value in values {
                    out.unite(&self.equal(field, value)?);
                }
                out
            }
            FieldOp::Nin(values) => {
                let mut inside = LabelSet::new();
                for value in values {
                    inside.unite(&self.equal(field, value)?);
                }
                self.complement(&inside)
            }
            FieldOp::Gt(b) => self.range(field, b, |k| (Edge::Excluded(k), Edge::Unbounded))?,
            FieldOp::Gte(b) => self.range(field, b, |k| (Edge::Included(k), Edge::Unbounded))?,
            FieldOp::Lt(b) => self.range(field, b, |k| (Edge::Unbounded, Edge::Excluded(k)))?,
            FieldOp::Lte(b) => self.range(field, b, |k| (Edge::Unbounded, Edge::Included(k)))?,
            FieldOp::Exists(true) => field.map(|f| of(&f.present)).unwrap_or_default(),
            FieldOp::Exists(false) => {
                self.complement(&field.map(|f| of(&f.present)).unwrap_or_default())
            }
            FieldOp::Contains(_) => return None,
        })
    }

    /// The labels whose value at this path equals `value`.
    fn equal(&self, field: Option<&FieldIndex>, value: &Value) -> Option<LabelSet> {
        let Some(field) = field else {
            // No memory has this path: nothing equals anything there (arrays and objects
            // included, which are otherwise left to the scan).
            return Some(LabelSet::new());
        };
        let list = match value {
            Value::Null => Some(&field.nulls),
            Value::Bool(true) => Some(&field.trues),
            Value::Bool(false) => Some(&field.falses),
            Value::Number(n) => {
                if field.wide > 0 {
                    return None;
                }
                field.numbers.get(&num_key(n)?)
            }
            Value::String(s) => field.strings.get(s),
            Value::Array(_) | Value::Object(_) => return None,
        };
        Some(list.map(|l| LabelSet::from_labels(l.iter().copied())).unwrap_or_default())
    }

    /// The labels whose number at this path lies between `low` and `high`.
    fn numbers_between(
        &self,
        field: Option<&FieldIndex>,
        low: Edge<Num>,
        high: Edge<Num>,
    ) -> Option<LabelSet> {
        let Some(field) = field else { return Some(LabelSet::new()) };
        if field.wide > 0 {
            return None;
        }
        let mut out = LabelSet::new();
        if is_empty_range(low, high) {
            return Some(out);
        }
        for list in field.numbers.range((low, high)).map(|(_, l)| l) {
            list.iter().for_each(|&label| {
                out.insert(label);
            });
        }
        Some(out)
    }

    /// The labels whose value at this path lies in the range `edges` makes of the bound.
    fn range<F>(&self, field: Option<&FieldIndex>, bound: &Bound, edges: F) -> Option<LabelSet>
    where
        F: Fn(Num) -> (Edge<Num>, Edge<Num>),
    {
        let Some(field) = field else { return Some(LabelSet::new()) };
        let mut out = LabelSet::new();
        match bound {
            Bound::Number(n) => {
                if field.wide > 0 {
                    return None;
                }
                for list in field.numbers.range(edges(num_key(n)?)).map(|(_, l)| l) {
                    list.iter().for_each(|&label| {
                        out.insert(label);
                    });
                }
            }
            Bound::Text(s) => {
                // The same edges, on strings.
                let (low, high) = edges(Num(0.0));
                let edge = |e: Edge<Num>| match e {
                    Edge::Included(_) => Edge::Included(s.as_str()),
                    Edge::Excluded(_) => Edge::Excluded(s.as_str()),
                    Edge::Unbounded => Edge::Unbounded,
                };
                let range = field.strings.range::<str, _>((edge(low), edge(high)));
                for list in range.map(|(_, l)| l) {
                    list.iter().for_each(|&label| {
                        out.insert(label);
                    });
                }
            }
        }
        Some(out)
    }
}

/// A bound on a number field as the edges of a range: `(path, low, high)`.
fn numeric_edges(part: &MetadataFilter) -> Option<(&str, Edge<Num>, Edge<Num>)> {
    let MetadataFilter::Field { path, op } = part else { return None };
    let (bound, low) = match op {
        FieldOp::Gt(b) => (b, Some(true)),
        FieldOp::Gte(b) => (b, Some(false)),
        FieldOp::Lt(b) => (b, None),
        FieldOp::Lte(b) => (b, None),
        _ => return None,
    };
    let Bound::Number(n) = bound else { return None };
    let key = num_key(n)?;
    Some(match (op, low) {
        (_, Some(true)) => (path, Edge::Excluded(key), Edge::Unbounded),
        (_, Some(false)) => (path, Edge::Included(key), Edge::Unbounded),
        (FieldOp::Lt(_), None) => (path, Edge::Unbounded, Edge::Excluded(key)),
        _ => (path, Edge::Unbounded, Edge::Included(key)),
    })
}

/// The narrower of two edges on the same side: `wins` is the ordering of the value that is
/// narrower (`Greater` for a low edge, `Less` for a high one); at equal values, excluded wins.
fn tighter(a: Edge<Num>, b: Edge<Num>, wins: Ordering) -> Edge<Num> {
    let value = |e: &Edge<Num>| match e {
        Edge::Included(v) | Edge::Excluded(v) => Some(*v),
        Edge::Unbounded => None,
    };
    match (value(&a), value(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x.cmp(&y) == wins => a,
        (Some(x), Some(y)) if y.cmp(&x) == wins => b,
        _ => match a {
            Edge::Excluded(_) => a,
            _ => b,
        },
    }
}

/// A range no number lies in (and that `BTreeMap::range` would refuse).
fn is_empty_range(low: Edge<Num>, high: Edge<Num>) -> bool {
    match (low, high) {
        (Edge::Included(a), Edge::Included(b)) => a > b,
        (Edge::Included(a) | Edge::Excluded(a), Edge::Excluded(b))
        | (Edge::Excluded(a), Edge::Included(b)) => a >= b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("an object"),
        }
    }

    /// Random metadata and random filters: wherever the index answers, it answers exactly what
    /// evaluating the filter on each memory gives, through inserts, replacements and removals.
    #[test]
    fn the_index_agrees_with_the_filter_on_every_memory() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let scalar = |r: u64| match r % 7 {
            0 => json!(null),
            1 => json!(r.is_multiple_of(2)),
            2 => json!(r % 5),
            3 => json!((r % 5) as f64 + 0.5),
            4 => json!(format!("s{}", r % 4)),
            5 => json!(["x", r % 3]),
            _ => json!({"inner": r % 3}),
        };
        let mut index = MetadataIndex::default();
        let mut stored: HashMap<u64, Map<String, Value>> = HashMap::new();
        let mut answered = 0;
        for step in 0..4_000 {
            let label = next(80);
            if let Some(old) = stored.remove(&label) {
                index.remove(label, &old);
            }
            if next(5) > 0 {
                let mut m = Map::new();
                for key in ["a", "b", "c"] {
                    if next(3) > 0 {
                        m.insert(key.into(), scalar(next(1000)));
                    }
                }
                if next(4) == 0 {
                    m.insert("u".into(), json!({"v": scalar(next(1000)), "w.x": 1}));
                }
                index.insert(label, &m);
                stored.insert(label, m);
            }
            if step % 10 != 0 {
                continue;
            }
            let field = ["a", "b", "c", "u.v", "u.w.x", "zz"][next(6) as usize];
            let arg = scalar(next(1000));
            let op =
                ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains"]
                    [next(10) as usize];
            let cond = match op {
                "$in" | "$nin" => json!({field: {op: [arg, scalar(next(1000))]}}),
                "$exists" => json!({field: {op: next(2) == 0}}),
                "$gt" | "$gte" | "$lt" | "$lte" if !(arg.is_number() || arg.is_string()) => {
                    json!({field: {op: next(9)}})
                }
                _ => json!({field: {op: arg}}),
            };
            // Two bounds on one field, in one object or across an `$and` (read as one range,
            // empty when they cross), and sometimes a third.
            let (low, high) =
                (["$gt", "$gte"][next(2) as usize], ["$lt", "$lte"][next(2) as usize]);
            let (x, y) = (json!(next(6)), json!((next(12) as f64) / 2.0));
            let filter = match next(7) {
                0 => json!({"$not": cond}),
                1 => json!({"$or": [cond, {"a": 1}]}),
                2 => json!({"$and": [cond, {"b": {"$exists": true}}]}),
                3 => json!({field: {low: x, high: y}}),
                4 => {
                    json!({"$and": [{field: {low: x}}, {field: {high: y}}, {field: {low: next(3)}}]})
                }
                _ => cond,
            };
            let parsed =
                MetadataFilter::parse(&object(filter.clone())).expect("valid").expect("some");
            let Some(got) = index.matching(&parsed) else { continue };
            answered += 1;
            let mut want: Vec<u64> =
                stored.iter().filter(|(_, m)| parsed.matches(m)).map(|(l, _)| *l).collect();
            want.sort_unstable();
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{filter} at step {step}");
        }
        assert!(answered > 200, "the index answered only {answered} filters");
        for (label, m) in stored.drain() {
            index.remove(label, &m);
        }
        assert!(index.fields.is_empty() && index.all.is_empty());
    }

    #[test]
    fn numbers_beyond_two_to_the_53_are_left_to_the_scan() {
        let mut index = MetadataIndex::default();
        index.insert(1, &object(json!({"id": 9_007_199_254_740_993u64, "n": 1})));
        let filter = |v: Value| MetadataFilter::parse(&object(v)).expect("valid").expect("some");
        assert!(index.matching(&filter(json!({"id": 9_007_199_254_740_992u64}))).is_none());
        assert!(index.matching(&filter(json!({"n": {"$gt": 0}}))).is_some());
        assert!(index.matching(&filter(json!({"n": 9_007_199_254_740_993u64}))).is_none());
    }
}
