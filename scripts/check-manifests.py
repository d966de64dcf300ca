#!/usr/bin/env python3
"""Checks deploy/: every YAML file parses; every workload has an image, resource requests, and
liveness/readiness probes on /health and /ready; the router has an HPA; the Prometheus rules
hold the alerts the runbook names, and every memring metric they use exists in the source code
(so a renamed metric breaks `make test`, not a production alert). Exit 1 with the reasons."""

import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
problems = []
docs = []
for path in sorted((root / "deploy").rglob("*.yaml")):
    try:
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as e:
        problems.append(f"{path}: does not parse: {e}")

kinds = {}
for path, d in docs:
    kinds.setdefault(d.get("kind"), []).append((path, d))
    if d.get("kind") not in ("Deployment", "StatefulSet"):
        continue
    name = d["metadata"]["name"]
    for c in d["spec"]["template"]["spec"]["containers"]:
        where = f"{path.name}: {name}/{c['name']}"
        if not c.get("image"):
            problems.append(f"{where}: no image")
        if not c.get("resources", {}).get("requests"):
            problems.append(f"{where}: no resource requests")
        live = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
        if live != "/health":
            problems.append(f"{where}: liveness probe must be GET /health, is {live}")
        if name.startswith("memring"):
            ready = c.get("readinessProbe", {}).get("httpGet", {}).get("path")
            if ready != "/ready":
                problems.append(f"{where}: readiness probe must be GET /ready, is {ready}")

# Secrets: every memring workload reads the cluster token and etcd's password from mounted
# Secret files; no environment value looks like a secret.
for path, d in docs:
    if d.get("kind") not in ("Deployment", "StatefulSet") or not d["metadata"]["name"].startswith("memring"):
        continue
    spec = d["spec"]["template"]["spec"]
    secrets = {v.get("secret", {}).get("secretName") for v in spec.get("volumes", [])}
    for wanted in ("memring-cluster-token", "memring-etcd"):
        if wanted not in secrets:
            problems.append(f"{path.name}: {d['metadata']['name']} does not mount the Secret {wanted}")
    for c in spec["containers"]:
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for name in ("MEMRING_CLUSTER_TOKEN_FILE", "MEMRING_ETCD_PASSWORD_FILE", "MEMRING_ETCD_USER"):
            if not env.get(name):
                problems.append(f"{path.name}: {c['name']} lacks {name}")
        for name, value in env.items():
            if re.search(r"TOKEN$|PASSWORD$|SECRET|API_KEY", name):
                problems.append(f"{path.name}: {c['name']} has {name} in its environment; mount it as a file")
# NetworkPolicies: default deny, and one for each of etcd, shard nodes, control plane, routers.
policies = {d["metadata"]["name"]: d for _, d in kinds.get("NetworkPolicy", [])}
for wanted in ("default-deny-ingress", "etcd", "memring-shard", "memring-control", "memring-router"):
    if wanted not in policies:
        problems.append(f"NetworkPolicy {wanted} missing")

workloads = {d["metadata"]["name"]: d["kind"] for k in ("Deployment", "StatefulSet") for _, d in kinds.get(k, [])}
for name, kind in [("etcd", "StatefulSet"), ("memring-shard", "StatefulSet"), ("memring-router", "Deployment"), ("memring-control", "Deployment")]:
    if workloads.get(name) != kind:
        problems.append(f"missing {kind} {name}")
if not any(d["spec"]["scaleTargetRef"]["name"] == "memring-router" for _, d in kinds.get("HorizontalPodAutoscaler", [])):
    problems.append("no HorizontalPodAutoscaler for memring-router")

source = "\n".join(p.read_text() for p in root.glob("*/src/**/*.rs"))
rules = [r for _, d in docs if "groups" in d for g in d["groups"] for r in g["rules"]]
names = {r["alert"] for r in rules}
for wanted in ["MemringNodeDown", "MemringReplicationLag", "MemringRingStale", "Memring5xxRate", "MemringLatencyP95OverSLO"]:
    if wanted not in names:
        problems.append(f"alert {wanted} missing")
for r in rules:
    for metric in re.findall(r"\b((?:memring|http)_[a-z_]+?)(?:_bucket|_sum|_count)?\b", r["expr"]):
        if f'"{metric}"' not in source:
            problems.append(f"alert {r['alert']} uses {metric}, which no binary exports")

# The Grafana dashboard: valid JSON whose panels query only metrics a binary exports.
import json

for path in sorted((root / "deploy").rglob("*.json")):
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        problems.append(f"{path}: does not parse: {e}")
        continue
    exprs = [t["expr"] for p in dash.get("panels", []) for t in p.get("targets", [])]
    if not exprs:
        problems.append(f"{path}: no panel queries anything")
    for expr in exprs:
        for metric in re.findall(r"\b((?:memring|http)_[a-z_]+?)(?:_bucket|_sum|_count)?\b", expr):
            if f'"{metric}"' not in source:
                problems.append(f"{path.name}: a panel uses {metric}, which no binary exports")

for p in problems:
    print(f"check-manifests: {p}", file=sys.stderr)
print(f"check-manifests: {len(docs)} documents, {len(rules)} alert rules, {len(problems)} problems")
sys.exit(1 if problems else 0)
