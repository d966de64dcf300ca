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

/// The partition a memory belongs to.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PartitionKey {
    /// `None` only for the cluster-wide `global` partition.
    tenant: Option<TenantId>,
    scope: Scope,
}

impl PartitionKey {
    /// The partition that holds `scope` memories of `tenant` (`global` maps to the one global partition).
    pub fn new(tenant: &TenantId, scope: &Scope) -> Self {
        match scope {
            Scope::Global => Self::global(),
            _ => Self { tenant: Some(tenant.clone()), scope: scope.clone() },
        }
    }

    /// The cluster-wide partition of `global` memories.
    pub fn global() -> Self {
        Self { tenant: None, scope: Scope::Global }
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
        let scope = self.scope.to_string();
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
        let scope = Scope::parse(scope).ok()?;
        let key = if tenant.is_empty() {
            if scope != Scope::Global {
                return None;
            }
            Self::global()
        } else {
            Self { tenant: Some(TenantId::parse(tenant).ok()?), scope }
        };
        Some((key, 2 + tlen as usize + slen as usize))
    }
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
            None => f.write_str("*/global"),
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
        let scope = Scope::parse(scope)?;
        if tenant == "*" && scope == Scope::Global {
            return Ok(Self::global());
        }
        Ok(Self::new(&TenantId::parse(tenant)?, &scope))
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
}
