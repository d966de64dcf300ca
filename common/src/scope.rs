//! Scopes and partition keys.
//!
//! A partition is the unit of placement, migration and verification: `(tenant, scope)` for the
//! private `agent:<id>` and `shared` scopes, and one cluster-wide partition for `global` memories
//! (readable by every tenant, written by admins only). The byte encoding of a partition key is the
//! prefix of every RocksDB key the shard node writes for it, so it is part of the on-disk format.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ApiError, ErrorCode};
use crate::ids::{AgentId, TenantId};

/// Where a memory lives and who can see it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Scope {
    /// Private to one agent of the tenant.
    Agent(AgentId),
    /// Visible to every agent of the tenant.
    Shared,
    /// Visible to every tenant; written by admins only.
    Global,
}

impl Scope {
    /// Parses `agent:<id>`, `shared` or `global`.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        match raw {
            "shared" => Ok(Scope::Shared),
            "global" => Ok(Scope::Global),
            _ => match raw.strip_prefix("agent:") {
                Some(agent) => Ok(Scope::Agent(AgentId::parse(agent)?)),
                None => Err(ApiError::bad_request(
                    ErrorCode::InvalidScope,
                    format!(
                        "unknown scope {raw:?}: use \"agent:<agent_id>\", \"shared\" or \"global\""
                    ),
                )),
            },
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Agent(agent) => write!(f, "agent:{agent}"),
            Scope::Shared => f.write_str("shared"),
            Scope::Global => f.write_str("global"),
        }
    }
}

impl FromStr for Scope {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Scope::parse(&raw).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// How many partitions `global` memories are spread over (by a hash of the memory id), so
/// they land on every node of the ring. Fixed: changing it would move every global memory.
pub const GLOBAL_BUCKETS: u8 = 16;

/// The partition a memory belongs to.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PartitionKey {
    /// `None` only for the cluster-wide `global` partitions.
    tenant: Option<TenantId>,
    scope: Scope,
    /// Which of the [`GLOBAL_BUCKETS`] global partitions (0 for every other partition).
    bucket: u8,
}

impl PartitionKey {
    /// The partition that holds `scope` memories of `tenant`; for `global`, the first global
    /// partition (use [`PartitionKey::of`] when the memory id is known, [`PartitionKey::all`]
    /// to reach every one).
    pub fn new(tenant: &TenantId, scope: &Scope) -> Self {
        match scope {
            Scope::Global => Self::global(),
            _ => Self { tenant: Some(tenant.clone()), scope: scope.clone(), bucket: 0 },
        }
    }

    /// The partition that holds memory `id` of `scope` for `tenant`: a `global` memory goes to
    /// the global partition its id hashes to.
    pub fn of(tenant: &TenantId, scope: &Scope, id: &str) -> Self {
        match scope {
            Scope::Global => Self::global_bucket(global_bucket_of(id)),
            _ => Self::new(tenant, scope),
        }
    }

    /// Every partition a read of `scope` must reach: one, or every global one.
    pub fn all(tenant: &TenantId, scope: &Scope) -> Vec<Self> {
        match scope {
            Scope::Global => (0..GLOBAL_BUCKETS).map(Self::global_bucket).collect(),
            _ => vec![Self::new(tenant, scope)],
        }
    }

    /// The first global partition.
    pub fn global() -> Self {
        Self::global_bucket(0)
    }

    /// Global partition `bucket` (taken modulo [`GLOBAL_BUCKETS`]).
    pub fn global_bucket(bucket: u8) -> Self {
        Self { tenant: None, scope: Scope::Global, bucket: bucket % GLOBAL_BUCKETS }
    }

    /// Which global partition this is (0 for every other partition).
    pub fn bucket(&self) -> u8 {
        self.bucket
    }

    /// The scope as a partition names it: the scope, or `global.<n>` for global partition n > 0.
    pub fn scope_part(&self) -> String {
        match self.bucket {
            0 => self.scope.to_string(),
            b => format!("global.{b}"),
        }
    }

    /// The partition named by a tenant (`*` for global) and a [`PartitionKey::scope_part`].
    pub fn from_parts(tenant: &str, scope: &str) -> Result<Self, ApiError> {
        if tenant == "*" {
            return parse_global_part(scope).ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::InvalidPartition,
                    format!("tenant * names only global partitions (global, global.1 … global.{}), not {scope:?}", GLOBAL_BUCKETS - 1),
                )
            });
        }
        Ok(Self::new(&TenantId::parse(tenant)?, &Scope::parse(scope)?))
    }

    /// The owning tenant, `None` for the global partition.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The stable byte form: `len(tenant) ‖ tenant ‖ len(scope) ‖ scope`, one length byte each.
    ///
    /// Ids are at most 128 bytes and `agent:` adds 6, so each part fits a one-byte length. The
    /// global partition has an empty tenant, which no real tenant can have. Because the tenant
    /// comes first, every partition of a tenant shares the prefix [`tenant_prefix`].
    pub fn encode(&self) -> Vec<u8> {
        let tenant = self.tenant.as_ref().map(|t| t.as_str()).unwrap_or("");
        let scope = self.scope_part();
        let mut out = tenant_prefix_raw(tenant);
        out.push(scope.len() as u8);
        out.extend_from_slice(scope.as_bytes());
        out
    }

    /// Parses the byte form written by [`PartitionKey::encode`]; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<(Self, usize)> {
        let (&tlen, rest) = bytes.split_first()?;
        let tenant = std::str::from_utf8(rest.get(..tlen as usize)?).ok()?;
        let rest = &rest[tlen as usize..];
        let (&slen, rest) = rest.split_first()?;
        let scope = std::str::from_utf8(rest.get(..slen as usize)?).ok()?;
        let key = if tenant.is_empty() {
            parse_global_part(scope)?
        } else {
            Self {
                tenant: Some(TenantId::parse(tenant).ok()?),
                scope: Scope::parse(scope).ok()?,
                bucket: 0,
            }
        };
        Some((key, 2 + tlen as usize + slen as usize))
    }
}

/// The global partition `global` (0) or `global.<n>` names; `None` for anything else.
fn parse_global_part(scope: &str) -> Option<PartitionKey> {
    let bucket = match scope.strip_prefix("global") {
        Some("") => 0,
        Some(rest) => {
            let n = rest.strip_prefix('.')?;
            // One canonical spelling per bucket: no sign, no leading zero, no 0.
            if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            n.parse::<u8>().ok().filter(|b| (1..GLOBAL_BUCKETS).contains(b))?
        }
        None => return None,
    };
    Some(PartitionKey::global_bucket(bucket))
}

/// The global partition a memory id belongs to: XXH3 of the id (pinned, like the ring).
pub fn global_bucket_of(id: &str) -> u8 {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % u64::from(GLOBAL_BUCKETS)) as u8
}

/// The key prefix shared by every partition of `tenant` (see [`PartitionKey::encode`]).
pub fn tenant_prefix(tenant: &TenantId) -> Vec<u8> {
    tenant_prefix_raw(tenant.as_str())
}

fn tenant_prefix_raw(tenant: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tenant.len() + 40);
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant.as_bytes());
    out
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(tenant) => write!(f, "{tenant}/{}", self.scope),
            None => write!(f, "*/{}", self.scope_part()),
        }
    }
}

impl FromStr for PartitionKey {
    type Err = ApiError;
    /// Parses the display form `tenant/scope` (or `*/global`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tenant, scope) = s.split_once('/').ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidPartition,
                format!("partition {s:?} is not of the form tenant/scope"),
            )
        })?;
        Self::from_parts(tenant, scope)
    }
}

impl Serialize for PartitionKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PartitionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(|e: ApiError| serde::de::Error::custom(e.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).expect("valid tenant")
    }

    #[test]
    fn scopes_round_trip() {
        for raw in ["shared", "global", "agent:planner", "agent:a.b-c_1"] {
            assert_eq!(Scope::parse(raw).expect(raw).to_string(), raw);
        }
    }

    #[test]
    fn bad_scopes_are_400() {
        for raw in ["", "agent:", "agent:a b", "Shared", "private", "agent"] {
            let err = Scope::parse(raw).expect_err(raw);
            assert_eq!(err.status(), 400, "{raw}");
        }
    }

    #[test]
    fn encoding_round_trips_and_keeps_tenants_apart() {
        let a = PartitionKey::new(&tenant("ab"), &Scope::Shared);
        let (back, used) = PartitionKey::decode(&a.encode()).expect("decodes");
        assert_eq!(back, a);
        assert_eq!(used, a.encode().len());
        // "ab" must not be a prefix match of tenant "abc".
        let abc = PartitionKey::new(&tenant("abc"), &Scope::Shared);
        assert!(!abc.encode().starts_with(&tenant_prefix(&tenant("ab"))));
        assert!(a.encode().starts_with(&tenant_prefix(&tenant("ab"))));
        let global = PartitionKey::new(&tenant("ab"), &Scope::Global);
        assert_eq!(global, PartitionKey::global());
        assert_eq!(PartitionKey::decode(&global.encode()).map(|p| p.0), Some(global));
    }

    #[test]
    fn display_form_parses_back() {
        for key in [
            PartitionKey::new(&tenant("t1"), &Scope::Agent(AgentId::parse("x").expect("id"))),
            PartitionKey::global(),
        ] {
            assert_eq!(key.to_string().parse::<PartitionKey>().expect("parses"), key);
        }
    }

    #[test]
    fn global_memories_spread_over_buckets_with_one_spelling_each() {
        let mut seen = [0usize; GLOBAL_BUCKETS as usize];
        for n in 0..1600 {
            seen[global_bucket_of(&format!("m{n}")) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        for b in 0..GLOBAL_BUCKETS {
            let p = PartitionKey::global_bucket(b);
            assert_eq!(PartitionKey::decode(&p.encode()).map(|x| x.0), Some(p.clone()));
            assert_eq!(p.to_string().parse::<PartitionKey>().expect("parses"), p);
            assert_eq!(PartitionKey::from_parts("*", &p.scope_part()).expect("parts"), p);
        }
        assert_eq!(PartitionKey::global().to_string(), "*/global");
        assert_eq!(PartitionKey::global_bucket(3).to_string(), "*/global.3");
        for bad in
            ["global.0", "global.01", "global.16", "global.x", "global.", "global.-1", "shared"]
        {
            assert!(PartitionKey::from_parts("*", bad).is_err(), "{bad}");
        }
        let t = tenant("ab");
        assert_eq!(PartitionKey::all(&t, &Scope::Global).len(), GLOBAL_BUCKETS as usize);
        assert_eq!(
            PartitionKey::all(&t, &Scope::Shared),
            vec![PartitionKey::new(&t, &Scope::Shared)]
        );
        assert_eq!(
            PartitionKey::of(&t, &Scope::Global, "m7"),
            PartitionKey::global_bucket(global_bucket_of("m7"))
        );
    }
}
