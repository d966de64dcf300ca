//! The control plane's HTTP API: every route, the key each one needs (`refusal`), and the
//! handlers that turn a request into a job (migrations, rebalance, drain, autopilot switch), a key
//! or a limit. Jobs run one at a time behind `migrating`; changes need the active control plane.

use std::sync::Arc;

use http::{Method, Request};
use hyper::body::Incoming;
use memring_common::auth::Principal;
use memring_common::http::{
    BoxFuture, Reply, Service, error_response, json, parse_json, query_pairs, read_body,
};
use memring_common::internal::InternalClient;
use memring_common::store::RingStore;
use memring_common::{ApiError, ErrorCode, NodeId, PartitionKey, Scope, TenantId};

#[cfg(feature = "testing")]
use crate::failpoint;
use crate::{autopilot, job, layout, migrate, rebalance, verify, view};
use memring_common::api::{
    ChangeReport, ClusterView, MigrateRequest, MigrationReport, PlanReport, ReplicaSetsShown,
};

/// The operator page served at `/` (no external resources; it polls `GET /v1/cluster`).
const DASHBOARD: &str = include_str!("dashboard.html");

pub(crate) struct ControlService {
    pub(crate) store: Arc<dyn RingStore>,
    /// API keys of the admin API; `None` when auth is off.
    pub(crate) keys: Option<Arc<memring_common::auth::KeyCache>>,
    pub(crate) client: InternalClient,
    /// One job at a time (per control plane): migrations, rebalances, drains, the copy sweep.
    pub(crate) migrating: Arc<tokio::sync::Mutex<()>>,
    /// True while this process is the active control plane.
    pub(crate) leader: std::sync::atomic::AtomicBool,
    /// Copy rate limit of every migration (one runs at a time).
    pub(crate) throttle: job::Throttle,
    /// Set by `POST /v1/migrations/cancel`, read by the running job.
    pub(crate) cancel: job::Cancel,
    /// Layout epochs seen since start (the operator page's history).
    pub(crate) epochs: Arc<view::EpochHistory>,
    /// Admits registered nodes when the layout's `auto_rebalance` is on (while leading).
    pub(crate) autopilot: Arc<autopilot::Autopilot>,
    /// What each node holds, for the cluster view (kept from the nodes' change feeds).
    pub(crate) listings: crate::listings::Listings,
}

impl ControlService {
    /// `POST /v1/migrations {"tenant", "scope"?, "to"}`: moves the tenant's partitions (or one
    /// scope's) to node `to`, one after another, and answers with a report per partition.
    async fn migrate(&self, req: Request<Incoming>) -> Result<Vec<MigrationReport>, ApiError> {
        self.require_leader()?;
        let body = read_body(req, 1 << 20).await?;
        let ask: MigrateRequest = parse_json(&body)?;
        let tenant = TenantId::parse(&ask.tenant)?;
        let to = NodeId::parse(&ask.to)?;
        let partitions: Vec<PartitionKey> = match &ask.scope {
            Some(scope) => vec![PartitionKey::new(&tenant, &Scope::parse(scope)?)],
            None => view::tenant_partitions(self.store.as_ref(), &self.client, &tenant)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string(), 1))?,
        };
        if partitions.is_empty() {
            return Err(ApiError::not_found(format!(
                "tenant {tenant} has no partitions on any node"
            )));
        }
        let _one_at_a_time = self.migrating.lock().await;
        self.cancel.clear();
        let mut reports = Vec::new();
        for p in partitions {
            let report = migrate::migrate_partition(
                self.store.as_ref(),
                &self.client,
                &p,
                &to,
                migrate::Flip::Pin,
                self.throttle,
                &self.cancel,
            )
            .await
            .map_err(|e| self.job_error(e))?;
            reports.push(report);
        }
        Ok(reports)
    }
}

impl ControlService {
    /// `POST /v1/keys {"tenant": T} | {"admin": true}, "label"?`: a new API key, shown once.
    async fn create_key(&self, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
        let body = read_body(req, 64 << 10).await?;
        let ask: KeyRequest = parse_json(&body)?;
        let principal = match (ask.tenant, ask.admin, ask.operator) {
            (Some(t), false, false) => Principal::Tenant(TenantId::parse(&t)?),
            (None, true, false) => Principal::Admin,
            (None, false, true) => Principal::Operator,
            _ => {
                return Err(ApiError::invalid(
                    "name exactly one of \"tenant\": \"<tenant id>\", \"admin\": true or \
                     \"operator\": true",
                ));
            }
        };
        if ask.label.len() > 256 {
            return Err(ApiError::invalid("\"label\" is at most 256 characters"));
        }
        let (record, key) =
            memring_common::auth::create_key(self.store.as_ref(), principal, &ask.label)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
        tracing::info!(target: "audit", action = "key.create", key_id = %record.id, principal = ?record.principal, label = %record.label, "API key created");
        Ok(serde_json::json!({ "id": record.id, "key": key, "principal": record.principal }))
    }

    /// `PUT /v1/limits/{tenant | _default}` (a `TenantLimits` body) or `DELETE` (back to the
    /// defaults): routers apply the change within a second.
    async fn set_limits(
        &self,
        method: Method,
        name: &str,
        req: Request<Incoming>,
    ) -> Result<(), ApiError> {
        use memring_common::store::Records;
        if name != memring_common::limits::DEFAULTS {
            TenantId::parse(name)?;
        }
        let unavailable =
            |e: memring_common::store::StoreError| ApiError::unavailable(e.to_string(), 1);
        if method == Method::DELETE {
            self.store.delete_record(Records::Limits, name).await.map_err(unavailable)?;
            tracing::info!(target: "audit", action = "limits.clear", tenant = %name, "tenant limits cleared");
            return Ok(());
        }
        let body = read_body(req, 64 << 10).await?;
        let limits: memring_common::limits::TenantLimits = parse_json(&body)?;
        limits.validate()?;
        let bytes = serde_json::to_vec(&limits).map_err(|e| ApiError::internal(e.to_string()))?;
        self.store.put_record(Records::Limits, name, &bytes).await.map_err(unavailable)?;
        tracing::info!(target: "audit", action = "limits.set", tenant = %name, ?limits, "tenant limits set");
        Ok(())
    }

    /// `DELETE /v1/keys/{id}`: revokes a key (routers stop accepting it within a second).
    async fn revoke_key(&self, id: &str) -> Result<(), ApiError> {
        let keys = memring_common::auth::list_keys(self.store.as_ref())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
        let Some(record) = keys.iter().find(|k| k.id == id) else {
            return Err(ApiError::not_found(format!("no API key {id}")));
        };
        self.store
            .delete_record(memring_common::store::Records::Keys, id)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
        tracing::info!(target: "audit", action = "key.revoke", key_id = %id, principal = ?record.principal, "API key revoked");
        Ok(())
    }

    /// The answer for a migration, rebalance or drain that failed: 409 when an operator
    /// cancelled it, else 503 (the cluster could not do it now).
    fn job_error(&self, e: anyhow::Error) -> ApiError {
        if job::JobError::is_cancelled(&e) {
            ApiError::new(ErrorCode::Conflict, format!("{e:#}"))
        } else {
            ApiError::unavailable(format!("{e:#}"), 5)
        }
    }

    /// Asks the running migration, rebalance or drain to stop (see `job::Cancel`).
    fn cancel_running(&self) -> Result<(), ApiError> {
        self.require_leader()?;
        if self.migrating.try_lock().is_ok() {
            return Err(ApiError::new(ErrorCode::Conflict, "no migration is running"));
        }
        self.cancel.set();
        tracing::warn!("cancel requested for the running migration");
        Ok(())
    }

    /// `GET /v1/plan`: what the layout asks for against what is, and what the engine does next
    /// (`shardctl plan`). Lists every node only when a node waits to join (the rebalance's dry
    /// run); an operator's question, not a periodic one.
    async fn plan(&self) -> anyhow::Result<PlanReport> {
        let layout = self.store.load().await?.layout;
        let waiting: Vec<String> = self
            .store
            .live_nodes()
            .await?
            .into_iter()
            .filter(|n| layout.node(&n.id).is_none())
            .map(|n| n.id.to_string())
            .collect();
        let unsettled = crate::placement::unsettled(&layout, None);
        let join = if waiting.is_empty() || unsettled.is_some() {
            None
        } else {
            let change = rebalance::Change::Join;
            Some(rebalance::plan(self.store.as_ref(), &self.client, &change).await?)
        };
        let policy_next = self.autopilot.policy_next(&layout);
        let next = match (&join, layout.auto_rebalance) {
            (None, _) if let Some(why) = unsettled.filter(|_| !waiting.is_empty()) => {
                Some(format!("admit {} later: {why}", waiting.join(", ")))
            }
            (Some(_), true) => Some(format!("admit {} (auto-rebalance on)", waiting.join(", "))),
            (Some(_), false) => {
                Some(format!("nothing until `shardctl rebalance` admits {}", waiting.join(", ")))
            }
            (None, _) => policy_next.clone(),
        };
        Ok(PlanReport {
            epoch: layout.epoch,
            auto_rebalance: layout.auto_rebalance,
            size_policy: layout.size_policy.clone(),
            waiting,
            join,
            policy_next,
            migrations: crate::journal::pending(self.store.as_ref()).await?,
            next,
        })
    }

    /// `PUT /v1/autopilot {"rebalance": bool}`: switches the layout's `auto_rebalance`;
    /// answers the autopilot's view.
    async fn set_autopilot(
        &self,
        req: Request<Incoming>,
    ) -> Result<memring_common::api::AutopilotView, ApiError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ask {
            rebalance: bool,
        }
        self.require_leader()?;
        let ask: Ask = parse_json(&read_body(req, 1024).await?)?;
        layout::set_auto_rebalance(self.store.as_ref(), ask.rebalance, None)
            .await
            .map_err(|e| ApiError::unavailable(format!("{e:#}"), 1))?;
        let mut view =
            memring_common::api::AutopilotView { enabled: ask.rebalance, ..Default::default() };
        self.autopilot.fill(&mut view);
        Ok(view)
    }

    /// `PUT /v1/policy`: sets the layout's size policy (a JSON `SizePolicy`, or `null` to clear
    /// it); answers the layout's epoch after. A node may become dedicated only while it is out
    /// of the layout (its ring share would otherwise change owners without moving their data),
    /// and stop being one only once drained out of it.
    async fn set_policy(&self, req: Request<Incoming>) -> Result<u64, ApiError> {
        self.require_leader()?;
        let policy: Option<memring_common::layout::SizePolicy> =
            parse_json(&read_body(req, 64 * 1024).await?)?;
        let mut refusal = None;
        let stored = memring_common::store::update_layout(self.store.as_ref(), 20, |layout| {
            let before = layout.size_policy.as_ref().map(|p| p.dedicated_nodes.clone());
            let after = policy.as_ref().map(|p| p.dedicated_nodes.clone());
            let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
            let moved = |n: &NodeId, what: &str| Some(ApiError::new(ErrorCode::Conflict, format!("node {n} is in the layout: {what}")));
            let problem = if let Some(n) = after.difference(&before).find(|n| layout.node(n).is_some()) {
                moved(n, "a node becomes dedicated before it joins (or after `shardctl drain`), or its ring share would change owners without its data")
            } else if let Some(n) = before.difference(&after).find(|n| layout.node(n).is_some()) {
                moved(n, "a dedicated node leaves the policy only once drained out of the layout (`shardctl drain`)")
            } else {
                None
            };
            let mut next = layout.clone();
            next.epoch += 1;
            next.size_policy = policy.clone();
            if let Some(problem) = problem.or_else(|| next.validate().err()) {
                refusal = Some(problem);
                return None;
            }
            (layout.size_policy != policy).then_some(next)
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
        if let Some(problem) = refusal {
            return Err(problem);
        }
        Ok(stored.layout.epoch)
    }

    fn require_leader(&self) -> Result<(), ApiError> {
        if self.leader.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        Err(ApiError::unavailable(
            "this control plane is a standby; send changes to the active one",
            1,
        ))
    }

    /// Plans (and unless `dry`, runs) a rebalance or drain; answers the plan and the migrations.
    async fn change(&self, change: rebalance::Change, dry: bool) -> Result<ChangeReport, ApiError> {
        self.require_leader()?;
        if let rebalance::Change::Drain(node) = &change {
            let id = NodeId::parse(node)?;
            let layout = self
                .store
                .load()
                .await
                .map_err(|e| ApiError::unavailable(e.to_string(), 1))?
                .layout;
            if layout.node(&id).is_none() {
                return Err(ApiError::not_found(format!("node {id} is not in the ring layout")));
            }
        }
        let _one_at_a_time = self.migrating.lock().await;
        if !dry {
            self.cancel.clear();
        }
        let fail = |e: anyhow::Error| self.job_error(e);
        let (plan, migrations) = if dry {
            let plan =
                rebalance::plan(self.store.as_ref(), &self.client, &change).await.map_err(fail)?;
            (plan, Vec::new())
        } else {
            rebalance::execute(
                self.store.as_ref(),
                &self.client,
                &change,
                self.throttle,
                &self.cancel,
            )
            .await
            .map_err(fail)?
        };
        Ok(ChangeReport { plan, migrations })
    }
}

/// Body of `POST /v1/keys`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    operator: bool,
    #[serde(default)]
    label: String,
}

impl ControlService {
    /// `GET /v1/cluster[?replica_sets=all|short|none]`: the cluster view.
    async fn cluster(&self, query: Option<&str>) -> Result<ClusterView, ApiError> {
        let mut shown = ReplicaSetsShown::All;
        for (k, v) in query_pairs(query)? {
            match k.as_str() {
                "replica_sets" => {
                    shown = ReplicaSetsShown::parse(&v).ok_or_else(|| {
                        ApiError::invalid(format!("replica_sets is all, short or none, not {v:?}"))
                    })?;
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown query parameter {other:?}; the cluster view takes replica_sets"
                    )));
                }
            }
        }
        let mut view = view::cluster_view(self.store.as_ref(), &self.client, &self.listings, shown)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
        view.epoch_history = self.epochs.list();
        self.autopilot.fill(&mut view.autopilot);
        Ok(view)
    }

    /// The answer to a request without the key its route needs (when auth is on): an admin
    /// key everywhere, an operator key also reads `GET /v1/cluster` and the operator page;
    /// `None` lets it through. Every change an admin key makes is written to the audit log.
    fn refusal(&self, req: &Request<Incoming>) -> Option<Reply> {
        let keys = self.keys.as_ref()?;
        let (method, path) = (req.method(), req.uri().path());
        let reads_state = method == Method::GET && matches!(path, "/" | "/v1/cluster" | "/v1/plan");
        let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let admitted = keys.authenticate_key(header).and_then(|(key_id, principal)| {
            if reads_state {
                principal.allow_operator("read the cluster's state")?;
            } else {
                principal.allow_admin("use the control plane's admin API")?;
            }
            Ok(key_id)
        });
        match admitted {
            Ok(key_id) => {
                if method != Method::GET {
                    tracing::info!(target: "audit", action = "admin.request", method = %method, path, key_id = %key_id, "admin API call");
                }
                None
            }
            Err(e) => {
                let mut response = error_response(&e);
                if e.status() == 401 && path == "/" {
                    // A browser asks for the key (as the password) and sends it on every poll.
                    response.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static(
                            "Basic realm=\"memring control plane (password: an API key)\"",
                        ),
                    );
                }
                Some(Reply { route: "unauthorized", response })
            }
        }
    }
}

impl Service for ControlService {
    fn handle(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<Reply> {
        Box::pin(async move {
            if let Some(refused) = self.refusal(&req) {
                return refused;
            }
            match (req.method().clone(), req.uri().path()) {
                (Method::GET, "/") => {
                    // The operator page: plain HTML and a small script polling /v1/cluster.
                    let mut response = memring_common::http::json_bytes(200, DASHBOARD.into());
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    Reply { route: "dashboard", response }
                }
                (Method::GET, "/v1/cluster") => {
                    let response = match self.cluster(req.uri().query()).await {
                        Ok(v) => json(200, &v),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "cluster", response }
                }
                (Method::GET, "/v1/verify") => {
                    let tenant = query_pairs(req.uri().query())
                        .ok()
                        .and_then(|q| q.into_iter().find(|(k, _)| k == "tenant").map(|(_, v)| v));
                    let response =
                        match verify::verify(self.store.as_ref(), &self.client, tenant.as_deref())
                            .await
                        {
                            Ok(v) => json(200, &v),
                            Err(e) => error_response(&ApiError::unavailable(e.to_string(), 1)),
                        };
                    Reply { route: "verify", response }
                }
                (Method::POST, "/v1/keys") => {
                    let response = match self.create_key(req).await {
                        Ok(created) => json(201, &created),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "keys.create", response }
                }
                (Method::GET, "/v1/keys") => {
                    let response = match memring_common::auth::list_keys(self.store.as_ref()).await
                    {
                        Ok(keys) => json(200, &serde_json::json!({ "keys": keys })),
                        Err(e) => error_response(&ApiError::unavailable(e.to_string(), 1)),
                    };
                    Reply { route: "keys.list", response }
                }
                (Method::DELETE, p) if p.starts_with("/v1/keys/") => {
                    let id = p.trim_start_matches("/v1/keys/").to_owned();
                    let response = match self.revoke_key(&id).await {
                        Ok(()) => memring_common::http::empty(204),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "keys.revoke", response }
                }
                (Method::GET, "/v1/limits") => {
                    let response = match memring_common::limits::load(self.store.as_ref()).await {
                        Ok((defaults, tenants)) => json(
                            200,
                            &serde_json::json!({
                                "defaults": defaults,
                                "tenants": tenants.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                            }),
                        ),
                        Err(e) => error_response(&ApiError::unavailable(e.to_string(), 1)),
                    };
                    Reply { route: "limits.list", response }
                }
                (m @ (Method::PUT | Method::DELETE), p) if p.starts_with("/v1/limits/") => {
                    let name = p.trim_start_matches("/v1/limits/").to_owned();
                    let response = match self.set_limits(m, &name, req).await {
                        Ok(()) => memring_common::http::empty(204),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "limits.set", response }
                }
                (Method::PUT, "/v1/autopilot") => {
                    let response = match self.set_autopilot(req).await {
                        Ok(view) => json(200, &view),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "autopilot", response }
                }
                (Method::GET, "/v1/plan") => {
                    let response = match self.plan().await {
                        Ok(plan) => json(200, &plan),
                        Err(e) => error_response(&ApiError::unavailable(format!("{e:#}"), 1)),
                    };
                    Reply { route: "plan", response }
                }
                (Method::PUT, "/v1/policy") => {
                    let response = match self.set_policy(req).await {
                        Ok(epoch) => json(200, &serde_json::json!({ "epoch": epoch })),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "policy", response }
                }
                (Method::POST, "/v1/migrations/cancel") => {
                    let response = match self.cancel_running() {
                        Ok(()) => json(202, &serde_json::json!({ "cancelling": true })),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "migrations.cancel", response }
                }
                (Method::POST, "/v1/migrations") => {
                    let response = match self.migrate(req).await {
                        Ok(reports) => json(200, &reports),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "migrations", response }
                }
                (Method::GET, "/v1/rebalance") | (Method::POST, "/v1/rebalance") => {
                    let dry = req.method() == Method::GET;
                    let response = match self.change(rebalance::Change::Join, dry).await {
                        Ok(v) => json(200, &v),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "rebalance", response }
                }
                (Method::GET, p) | (Method::POST, p) if p.starts_with("/v1/drain/") => {
                    let dry = req.method() == Method::GET;
                    let node = p.trim_start_matches("/v1/drain/").to_owned();
                    let response = match self.change(rebalance::Change::Drain(node), dry).await {
                        Ok(v) => json(200, &v),
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "drain", response }
                }
                #[cfg(feature = "testing")]
                (Method::POST, p) if p.starts_with("/debug/v1/failpoints/") => {
                    let name = p.trim_start_matches("/debug/v1/failpoints/").to_owned();
                    let action = read_body(req, 1024)
                        .await
                        .map(|b| String::from_utf8_lossy(&b).trim().to_owned());
                    let response = match action {
                        Ok(action) => {
                            failpoint::set(&name, &action);
                            json(200, &serde_json::json!({ "failpoint": name, "action": action }))
                        }
                        Err(e) => error_response(&e),
                    };
                    Reply { route: "debug", response }
                }
                (m, p) => Reply {
                    route: "unknown",
                    response: error_response(&ApiError::new(
                        ErrorCode::RouteNotFound,
                        format!("no endpoint {m} {p}"),
                    )),
                },
            }
        })
    }

    fn ready(&self) -> Result<(), String> {
        if !self.leader.load(std::sync::atomic::Ordering::Acquire) {
            return Err("standby: another control plane is active".into());
        }
        Ok(())
    }
}
