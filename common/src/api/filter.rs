//! The metadata filter language of a search (API.md, "Filters"): parsed and checked once into a
//! [`MetadataFilter`], then evaluated against each candidate memory's metadata.
//!
//! The router parses a filter to answer a bad one with `400 invalid_filter` before anything is
//! sent; the shard node parses the same JSON again with the same code, so every copy of a
//! partition evaluates a filter the same way. Parsing recurses only through `$and`, `$or` and
//! `$not`, and stops at [`MAX_FILTER_DEPTH`], so no filter can exhaust the stack.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::json_kind;
use crate::error::{ApiError, ErrorCode};

/// Deepest nesting of `$and` / `$or` / `$not`.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Most clauses in one filter: one per field condition, one per operator.
pub const MAX_FILTER_CLAUSES: usize = 64;

/// A parsed metadata filter.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataFilter {
    /// Every part holds (`$and`, and the keys of one object).
    All(Vec<MetadataFilter>),
    /// Some part holds (`$or`).
    Any(Vec<MetadataFilter>),
    /// The part does not hold (`$not`).
    Not(Box<MetadataFilter>),
    /// A condition on the value at a dotted path.
    Field {
        /// The key, or a dotted path into nested objects.
        path: String,
        /// What the value must satisfy.
        op: FieldOp,
    },
}

/// A condition on one field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldOp {
    /// Present and equal (numbers by value).
    Eq(Value),
    /// Missing, of another type, or different.
    Ne(Value),
    /// Present, of the bound's type, and greater.
    Gt(Bound),
    /// Present, of the bound's type, and greater or equal.
    Gte(Bound),
    /// Present, of the bound's type, and less.
    Lt(Bound),
    /// Present, of the bound's type, and less or equal.
    Lte(Bound),
    /// Present and equal to one of these.
    In(Vec<Value>),
    /// Missing or equal to none of these.
    Nin(Vec<Value>),
    /// An array holding this value.
    Contains(Value),
    /// Present (`true`) or missing (`false`).
    Exists(bool),
}

/// The argument of a comparison: numbers compare with numbers, strings with strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// A JSON number.
    Number(Number),
    /// A string (RFC 3339 times in one offset compare correctly as strings).
    Text(String),
}

impl MetadataFilter {
    /// Parses `filter.metadata`; `None` for an empty object (no condition).
    pub fn parse(metadata: &Map<String, Value>) -> Result<Option<Self>, ApiError> {
        if metadata.is_empty() {
            return Ok(None);
        }
        let mut parser = Parser { clauses: 0 };
        parser.object(metadata, "filter.metadata", 0).map(Some)
    }

    /// Does a memory with this metadata pass?
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        match self {
            MetadataFilter::All(parts) => parts.iter().all(|p| p.matches(metadata)),
            MetadataFilter::Any(parts) => parts.iter().any(|p| p.matches(metadata)),
            MetadataFilter::Not(part) => !part.matches(metadata),
            MetadataFilter::Field { path, op } => op.holds(lookup(metadata, path)),
        }
    }
}

impl FieldOp {
    /// Does the field's value (`None` when missing) satisfy this condition?
    pub fn holds(&self, value: Option<&Value>) -> bool {
        match self {
            FieldOp::Eq(want) => value.is_some_and(|v| same(v, want)),
            FieldOp::Ne(want) => !value.is_some_and(|v| same(v, want)),
            FieldOp::Gt(bound) => compare(value, bound).is_some_and(Ordering::is_gt),
            FieldOp::Gte(bound) => compare(value, bound).is_some_and(Ordering::is_ge),
            FieldOp::Lt(bound) => compare(value, bound).is_some_and(Ordering::is_lt),
            FieldOp::Lte(bound) => compare(value, bound).is_some_and(Ordering::is_le),
            FieldOp::In(set) => value.is_some_and(|v| set.iter().any(|w| same(v, w))),
            FieldOp::Nin(set) => !value.is_some_and(|v| set.iter().any(|w| same(v, w))),
            FieldOp::Contains(want) => {
                value.and_then(Value::as_array).is_some_and(|xs| xs.iter().any(|x| same(x, want)))
            }
            FieldOp::Exists(present) => value.is_some() == *present,
        }
    }
}

/// The value at `path`: the top-level key spelled exactly so first (an older client's key may
/// hold a dot), else the dotted path walked through nested objects.
pub fn lookup<'a>(metadata: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = metadata.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = metadata.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// JSON equality with numbers compared by value (`3` equals `3.0`), at any depth.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Orders two JSON numbers by value: exactly when both are integers, else as f64.
pub fn compare_numbers(x: &Number, y: &Number) -> Ordering {
    match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
        (Some(a), Some(b), _, _) => a.cmp(&b),
        (_, _, Some(a), Some(b)) => a.cmp(&b),
        // One is a u64 above i64::MAX and the other a negative i64.
        (Some(_), None, _, Some(_)) => Ordering::Less,
        (None, Some(_), Some(_), _) => Ordering::Greater,
        _ => {
            let (a, b) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            a.partial_cmp(&b).unwrap_or(Ordering::Equal)
        }
    }
}

/// How `value` orders against `bound`; `None` when missing or of another type.
fn compare(value: Option<&Value>, bound: &Bound) -> Option<Ordering> {
    match (value?, bound) {
        (Value::Number(x), Bound::Number(y)) => Some(compare_numbers(x, y)),
        (Value::String(x), Bound::Text(y)) => Some(x.as_str().cmp(y.as_str())),
        _ => None,
    }
}

/// The operators that follow a field name.
const FIELD_OPERATORS: [&str; 10] =
    ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains", "$exists"];

struct Parser {
    clauses: usize,
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidFilter, message)
}

impl Parser {
    /// Counts one clause; too many is an error.
    fn count(&mut self, at: &str) -> Result<(), ApiError> {
        self.clauses += 1;
        if self.clauses > MAX_FILTER_CLAUSES {
            return Err(invalid(format!(
                "the filter has more than {MAX_FILTER_CLAUSES} clauses (at {at}); split the \
                 search or simplify the filter"
            )));
        }
        Ok(())
    }

    /// An object of conditions, all of which must hold.
    fn object(
        &mut self,
        map: &Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<MetadataFilter, ApiError> {
        let mut parts = Vec::with_capacity(map.len());
        for (key, value) in map {
            let here = format!("{at}.{key}");
            parts.push(match key.as_str() {
                "$and" | "$or" => {
                    self.count(&here)?;
                    let list = self.list(value, &here, depth + 1)?;
                    if key == "$and" { MetadataFilter::All(list) } else { MetadataFilter::Any(list) }
                }
                "$not" => {
                    self.count(&here)?;
                    let Value::Object(inner) = value else {
                        return Err(invalid(format!("{here} takes an object of conditions")));
                    };
                    self.nest(&here, depth + 1)?;
                    MetadataFilter::Not(Box::new(self.object(inner, &here, depth + 1)?))
                }
                op if op.starts_with('$') => {
                    let hint = if FIELD_OPERATORS.contains(&op) {
                        format!("{op} goes inside a field's condition, as {{\"field\": {{\"{op}\": ...}}}}")
                    } else {
                        "the operators are $eq $ne $gt $gte $lt $lte $in $nin $contains $exists \
                         $and $or $not"
                            .to_owned()
                    };
                    return Err(invalid(format!("unknown filter operator {op} at {here}: {hint}")));
                }
                path => self.field(path, value, &here)?,
            });
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { MetadataFilter::All(parts) })
    }

    fn nest(&self, at: &str, depth: usize) -> Result<(), ApiError> {
        if depth > MAX_FILTER_DEPTH {
            return Err(invalid(format!(
                "the filter nests $and/$or/$not deeper than {MAX_FILTER_DEPTH} (at {at})"
            )));
        }
        Ok(())
    }

    /// The non-empty array of objects of `$and` / `$or`.
    fn list(
        &mut self,
        value: &Value,
        at: &str,
        depth: usize,
    ) -> Result<Vec<MetadataFilter>, ApiError> {
        self.nest(at, depth)?;
        let Some(items) = value.as_array().filter(|items| !items.is_empty()) else {
            return Err(invalid(format!("{at} takes a non-empty array of objects of conditions")));
        };
        let mut parts = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let here = format!("{at}[{i}]");
            let Value::Object(inner) = item else {
                return Err(invalid(format!("{here} must be an object of conditions")));
            };
            parts.push(self.object(inner, &here, depth)?);
        }
        Ok(parts)
    }

    /// The condition on field `path`: a value (equality, as in the first part of the API), or
    /// an object of operators, all of which must hold.
    fn field(&mut self, path: &str, value: &Value, at: &str) -> Result<MetadataFilter, ApiError> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(invalid(format!("{at}: a field path is dot-separated non-empty keys")));
        }
        let field = |op| MetadataFilter::Field { path: path.to_owned(), op };
        let ops = match value {
            Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => ops,
            // An object with no operator is compared whole, as the equality filter always did.
            _ => {
                self.count(at)?;
                return Ok(field(FieldOp::Eq(value.clone())));
            }
        };
        let mut parts = Vec::with_capacity(ops.len());
        for (op, arg) in ops {
            let here = format!("{at}.{op}");
            self.count(&here)?;
            let bound = || match arg {
                Value::Number(n) => Ok(Bound::Number(n.clone())),
                Value::String(s) => Ok(Bound::Text(s.clone())),
                _ => Err(invalid(format!(
                    "{here} takes a number or a string, got {}",
                    json_kind(arg)
                ))),
            };
            let set = || match arg {
                Value::Array(items) => Ok(items.clone()),
                _ => {
                    Err(invalid(format!("{here} takes an array of values, got {}", json_kind(arg))))
                }
            };
            parts.push(field(match op.as_str() {
                "$eq" => FieldOp::Eq(arg.clone()),
                "$ne" => FieldOp::Ne(arg.clone()),
                "$gt" => FieldOp::Gt(bound()?),
                "$gte" => FieldOp::Gte(bound()?),
                "$lt" => FieldOp::Lt(bound()?),
                "$lte" => FieldOp::Lte(bound()?),
                "$in" => FieldOp::In(set()?),
                "$nin" => FieldOp::Nin(set()?),
                "$contains" => FieldOp::Contains(arg.clone()),
                "$exists" => match arg {
                    Value::Bool(present) => FieldOp::Exists(*present),
                    _ => {
                        return Err(invalid(format!(
                            "{here} takes true or false, got {}",
                            json_kind(arg)
                        )));
                    }
                },
                op if op.starts_with('$') => {
                    return Err(invalid(format!(
                        "unknown filter operator {op} at {here}: a field's operators are $eq $ne \
                         $gt $gte $lt $lte $in $nin $contains $exists"
                    )));
                }
                other => {
                    return Err(invalid(format!(
                        "{at} mixes operators with the plain key \"{other}\"; write either \
                         operators or a value to compare with"
                    )));
                }
            }));
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { MetadataFilter::All(parts) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(filter: Value) -> Result<Option<MetadataFilter>, ApiError> {
        let Value::Object(map) = filter else { panic!("test filters are objects") };
        MetadataFilter::parse(&map)
    }

    fn passes(filter: Value, metadata: Value) -> bool {
        let Value::Object(metadata) = metadata else { panic!("test metadata is an object") };
        parse(filter).expect("valid filter").expect("non-empty").matches(&metadata)
    }

    #[test]
    fn every_operator_matches_and_refuses() {
        let m = json!({"n": 3, "s": "b", "tags": ["x", 2], "user": {"country": "PT"}, "z": null});
        let cases = [
            (json!({"n": 3.0}), true),
            (json!({"n": 4}), false),
            (json!({"n": {"$eq": 3}}), true),
            (json!({"n": {"$eq": "3"}}), false),
            (json!({"n": {"$ne": 4}}), true),
            (json!({"n": {"$ne": 3}}), false),
            (json!({"missing": {"$ne": 3}}), true),
            (json!({"n": {"$gt": 2}}), true),
            (json!({"n": {"$gt": 3}}), false),
            (json!({"n": {"$gte": 3}}), true),
            (json!({"n": {"$gte": 3.5}}), false),
            (json!({"n": {"$lt": 3.5}}), true),
            (json!({"n": {"$lt": 3}}), false),
            (json!({"n": {"$lte": 3}}), true),
            (json!({"n": {"$lte": 2}}), false),
            (json!({"s": {"$gt": "a"}}), true),
            (json!({"s": {"$gt": "c"}}), false),
            (json!({"s": {"$gt": 1}}), false),
            (json!({"missing": {"$lt": 9}}), false),
            (json!({"n": {"$in": [1, 3]}}), true),
            (json!({"n": {"$in": [1, 2]}}), false),
            (json!({"n": {"$nin": [1, 2]}}), true),
            (json!({"n": {"$nin": [3]}}), false),
            (json!({"missing": {"$nin": [3]}}), true),
            (json!({"missing": {"$in": [3]}}), false),
            (json!({"tags": {"$contains": "x"}}), true),
            (json!({"tags": {"$contains": 2.0}}), true),
            (json!({"tags": {"$contains": "y"}}), false),
            (json!({"s": {"$contains": "b"}}), false),
            (json!({"z": {"$exists": true}}), true),
            (json!({"missing": {"$exists": true}}), false),
            (json!({"missing": {"$exists": false}}), true),
            (json!({"user.country": "PT"}), true),
            (json!({"user.country": "ES"}), false),
            (json!({"user": {"country": "PT"}}), true),
            (json!({"n": {"$gt": 1, "$lt": 5}}), true),
            (json!({"n": {"$gt": 1, "$lt": 3}}), false),
            (json!({"$and": [{"n": 3}, {"s": "b"}]}), true),
            (json!({"$and": [{"n": 3}, {"s": "c"}]}), false),
            (json!({"$or": [{"n": 4}, {"s": "b"}]}), true),
            (json!({"$or": [{"n": 4}, {"s": "c"}]}), false),
            (json!({"$not": {"n": 4}}), true),
            (json!({"$not": {"n": 3}}), false),
            (json!({"n": 3, "s": "c"}), false),
        ];
        for (filter, want) in cases {
            assert_eq!(passes(filter.clone(), m.clone()), want, "{filter}");
        }
    }

    #[test]
    fn a_dotted_top_level_key_is_matched_first() {
        let m = json!({"user.country": "PT", "user": {"country": "ES"}});
        assert!(passes(json!({"user.country": "PT"}), m.clone()));
        assert!(!passes(json!({"user.country": "ES"}), m));
    }

    #[test]
    fn big_integers_compare_exactly() {
        let m = json!({"id": 9_007_199_254_740_993u64});
        assert!(!passes(json!({"id": 9_007_199_254_740_992u64}), m.clone()));
        assert!(passes(json!({"id": {"$gt": 9_007_199_254_740_992u64}}), m.clone()));
        assert!(passes(json!({"id": {"$gt": -1}}), m));
    }

    #[test]
    fn bad_filters_are_invalid_filter_naming_operator_and_path() {
        let cases = [
            (json!({"kind": {"$regex": "a"}}), "$regex"),
            (json!({"$where": "1"}), "$where"),
            (json!({"kind": {"$in": "a"}}), "filter.metadata.kind.$in"),
            (json!({"n": {"$gt": {"a": 1}}}), "filter.metadata.n.$gt"),
            (json!({"n": {"$exists": 1}}), "filter.metadata.n.$exists"),
            (json!({"$and": []}), "filter.metadata.$and"),
            (json!({"$or": [1]}), "filter.metadata.$or[0]"),
            (json!({"$not": [1]}), "filter.metadata.$not"),
            (json!({"n": {"$gt": 1, "x": 2}}), "filter.metadata.n"),
            (json!({"$in": [1]}), "$in"),
            (json!({"a..b": 1}), "filter.metadata.a..b"),
        ];
        for (filter, names) in cases {
            let err = parse(filter.clone()).expect_err(&filter.to_string());
            assert_eq!(err.code(), ErrorCode::InvalidFilter, "{filter}");
            assert!(err.message().contains(names), "{filter}: {}", err.message());
        }
        // An object without operators is an equality on the whole object, as before.
        assert!(parse(json!({"o": {"a": 1}})).expect("equality").is_some());
        assert!(parse(json!({})).expect("empty").is_none());
    }

    #[test]
    fn depth_and_clause_limits() {
        let mut deep = json!({"n": 1});
        for _ in 0..MAX_FILTER_DEPTH {
            deep = json!({"$not": deep});
        }
        assert!(parse(deep.clone()).is_ok());
        let deeper = json!({"$and": [deep]});
        let err = parse(deeper).expect_err("depth 9");
        assert!(err.message().contains("deeper than 8"), "{}", err.message());
        let many: Map<String, Value> =
            (0..MAX_FILTER_CLAUSES).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(MetadataFilter::parse(&many).is_ok());
        let mut too_many = many;
        too_many.insert("one_more".into(), json!(1));
        let err = MetadataFilter::parse(&too_many).expect_err("65 clauses");
        assert!(err.message().contains("more than 64"), "{}", err.message());
    }

    /// A random filter tree: mostly valid operators with arguments of the right and wrong kinds,
    /// some unknown ones, nesting past the depth limit now and then.
    fn random_filter(rng: &mut rand::rngs::StdRng, depth: usize) -> Value {
        use rand::Rng;
        let paths = ["n", "s", "b", "tags", "o.x", "o", "missing", "a.b.c"];
        let scalar = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..7) {
            0 => json!(rng.random_range(-3..4)),
            1 => json!(["x", "y", "z"][rng.random_range(0..3)]),
            2 => json!(rng.random_bool(0.5)),
            3 => Value::Null,
            4 => json!(rng.random_range(-3.0..3.0)),
            5 => json!([rng.random_range(0..3), "x"]),
            _ => json!({"x": rng.random_range(0..3)}),
        };
        if depth > 0 && rng.random_bool(0.4) {
            let logical = ["$and", "$or", "$not", "$nor", "$xor"][rng.random_range(0..5)];
            let children: Vec<Value> =
                (0..rng.random_range(0..4)).map(|_| random_filter(rng, depth - 1)).collect();
            return match logical {
                "$not" if !children.is_empty() => json!({"$not": children[0].clone()}),
                _ => json!({ logical: children }),
            };
        }
        let path = paths[rng.random_range(0..paths.len())];
        let ops = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains"];
        let condition = match rng.random_range(0..6) {
            0 => scalar(rng),
            1 => json!({"$exists": rng.random_bool(0.5)}),
            2 => json!({"$regex": "x"}),
            3 => json!({ ops[rng.random_range(0..ops.len())]: [scalar(rng), scalar(rng)] }),
            _ => json!({ ops[rng.random_range(0..ops.len())]: scalar(rng) }),
        };
        json!({ path: condition })
    }

    fn random_metadata(rng: &mut rand::rngs::StdRng) -> Map<String, Value> {
        use rand::Rng;
        let mut m = Map::new();
        if rng.random_bool(0.8) {
            m.insert("n".into(), json!(rng.random_range(-3..4)));
        }
        if rng.random_bool(0.8) {
            m.insert("s".into(), json!(["x", "y", "z"][rng.random_range(0..3)]));
        }
        if rng.random_bool(0.5) {
            m.insert("b".into(), json!(rng.random_bool(0.5)));
        }
        if rng.random_bool(0.5) {
            m.insert("tags".into(), json!(["x", rng.random_range(0..3)]));
        }
        if rng.random_bool(0.5) {
            m.insert("o".into(), json!({"x": rng.random_range(0..3)}));
        }
        m
    }

    /// Seeded fuzz of the parser and the evaluator: no input panics; every refusal is
    /// `invalid_filter` naming where it is; and what parses obeys the logic of its operators
    /// (`$not` negates, `$and` is both, `$or` is either) on random metadata.
    #[test]
    fn random_filters_parse_or_are_refused_and_obey_their_logic() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let a = random_filter(&mut rng, 10);
            let b = random_filter(&mut rng, 3);
            let (fa, fb) = match (parse(a.clone()), parse(b.clone())) {
                (Ok(Some(fa)), Ok(Some(fb))) => (fa, fb),
                (Err(err), _) | (_, Err(err)) => {
                    refused += 1;
                    assert_eq!(err.code(), ErrorCode::InvalidFilter);
                    assert!(err.message().contains("filter.metadata"), "{}", err.message());
                    continue;
                }
                _ => continue,
            };
            parsed += 1;
            let not_a = parse(json!({"$not": a.clone()}));
            let and = parse(json!({"$and": [a.clone(), b.clone()]}));
            let or = parse(json!({"$or": [a.clone(), b.clone()]}));
            for _ in 0..4 {
                let m = random_metadata(&mut rng);
                let (x, y) = (fa.matches(&m), fb.matches(&m));
                // Wrapping may pass the depth limit; then it must be refused, never misread.
                for (wrapped, want) in [(&not_a, !x), (&and, x && y), (&or, x || y)] {
                    match wrapped {
                        Ok(Some(f)) => assert_eq!(f.matches(&m), want, "{a} / {b} on {m:?}"),
                        Err(err) => assert!(err.message().contains("deeper than"), "{err:?}"),
                        Ok(None) => panic!("a wrapped filter vanished"),
                    }
                }
            }
        }
        assert!(parsed > 1_000 && refused > 1_000, "parsed {parsed}, refused {refused}");
    }
}
