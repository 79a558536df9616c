#!/usr/bin/env python3
"""Validates rendered peftrain manifests offline, strictly, then what schemas cannot see.

Schemas:
- core kinds: the Kubernetes JSON schemas kubernetes-validate carries (strict: unknown fields
  are errors, and a kind without a schema is an error, not the library's warning);
- JobSet: the JobSet CRD's own openAPIV3Schema (--jobset-crd, v0.9.1 in ../shared/schemas),
  with unknown fields refused as `kubectl apply --validate=strict` would; and each replicated
  Job's template once more as a batch/v1 Job against the core schemas;
- cert-manager kinds: the validators kubernetes-models generates from cert-manager's CRDs, and
  unknown fields refused by walking its generated type declarations (tests/deploy/certmanager,
  from npm).

Then the run itself: one JobSet whose coordinator and workers fit together, the failure and
success policies, the PodDisruptionBudget and NetworkPolicies selecting the right pods, probes,
resources, mounts, the token Secret left out of the render, TLS wired where certificates are.

    validate_manifests.py --jobset-crd CRD [--k8s-version X.Y.Z] [--expect-workers N]
                          [--expect-device D] [--expect-gpu] [--expect-tls] [--allow-secret]
                          [--plain] FILE...

--plain: FILE is a bare manifest (no peftrain run in it): schema checks only.
Prints one line per problem; exit 1 if any.
"""

import argparse
import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib

import jsonschema
import yaml
import kubernetes_validate.utils as kv

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
HERE = os.path.dirname(os.path.abspath(__file__))
JOBSET_API = "jobset.x-k8s.io/v1alpha2"
CERT_MANAGER_GROUP = "cert-manager.io/"
# What a preempted peftrain process exits with in the manifests (PEFTRAIN_SIGNAL_EXIT_CODE).
SIGNAL_EXIT = 143


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(o):
    return "%s/%s" % (o.get("kind", "?"), o.get("metadata", {}).get("name", "?"))


# --- schemas ---------------------------------------------------------------------------------

def crd_schema(crd_path, version):
    (crd,) = [d for d in load(crd_path) if d.get("kind") == "CustomResourceDefinition"]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise SystemExit("%s has no version %s" % (crd_path, version))


def unknown_fields(value, schema, where, out):
    """Fields a structural schema does not declare (the API server would prune them silently;
    `kubectl --validate=strict` refuses them)."""
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            for k in value:
                if k not in props:
                    out.append("%s.%s: unknown field" % (where, k))
        for k, v in value.items():
            if props and k in props:
                unknown_fields(v, props[k], "%s.%s" % (where, k), out)
            elif isinstance(schema.get("additionalProperties"), dict):
                unknown_fields(v, schema["additionalProperties"], "%s.%s" % (where, k), out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            unknown_fields(v, schema["items"], "%s[%d]" % (where, i), out)


def core_errors(o, version, path, label=None):
    label = label or name_of(o)
    try:
        kv.validate(o, version, strict=True)
    except kv.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        return ["%s: %s does not validate against Kubernetes %s: %s: %s" % (path, label, e.version, where, e.message)]
    except kv.SchemaNotFoundError as e:
        return ["%s: %s: %s" % (path, label, e.message)]
    except kv.VersionNotSupportedError as e:
        return ["kubernetes-validate %s has no schemas for Kubernetes %s" % (kv.__version__, e.version)]
    return []


def jobset_errors(o, schema, version, path):
    errs = []
    v = jsonschema.Draft7Validator(schema)
    for e in sorted(v.iter_errors(o), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in e.path)
        errs.append("%s: %s does not validate against the JobSet CRD: %s: %s" % (path, name_of(o), where, e.message))
    unknown = []
    unknown_fields(o, schema, name_of(o), unknown)
    errs += ["%s: %s" % (path, u) for u in unknown]
    # Each Job as the JobSet controller will create it, against the core schemas.
    for rj in o.get("spec", {}).get("replicatedJobs", []):
        t = rj.get("template", {})
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "%s-%s-0" % (o["metadata"]["name"], rj.get("name")), **{k: v for k, v in t.get("metadata", {}).items()}},
               "spec": copy.deepcopy(t.get("spec", {}))}
        errs += core_errors(job, version, path, "%s replicatedJob %s (as a Job)" % (name_of(o), rj.get("name")))
    return errs


def cert_manager_errors(objs, path):
    if not objs:
        return []
    script = os.path.join(HERE, "certmanager", "validate.mjs")
    if not os.path.isdir(os.path.join(HERE, "certmanager", "node_modules")):
        return ["%s: cert-manager validators not installed: npm ci --prefix tests/deploy/certmanager (check.sh does it)" % path]
    p = subprocess.run(["node", script], input=json.dumps(objs), capture_output=True, text=True)
    if p.returncode != 0:
        lines = (p.stdout + p.stderr).strip().splitlines() or ["node exited %d" % p.returncode]
        return ["%s: %s" % (path, l) for l in lines]
    return []


def schema_errors(objs, version, path, jobset_schema):
    errs = []
    for o in objs:
        if o.get("apiVersion") == JOBSET_API and o.get("kind") == "JobSet":
            errs += jobset_errors(o, jobset_schema, version, path)
        elif str(o.get("apiVersion", "")).startswith(CERT_MANAGER_GROUP):
            continue
        else:
            errs += core_errors(o, version, path)
    errs += cert_manager_errors([o for o in objs if str(o.get("apiVersion", "")).startswith(CERT_MANAGER_GROUP)], path)
    return errs


# --- the run ---------------------------------------------------------------------------------

def env_value(c, name):
    for e in c.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None


def check_env_refs(where, c, errs):
    """$(VAR) in an env value must name a variable defined earlier in the list; in args and
    command, any variable of the list. Kubernetes leaves an unresolved reference as is."""
    seen = set()
    for e in c.get("env", []):
        for ref in VAR_REF.findall(e.get("value") or ""):
            if ref not in seen:
                errs.append("%s: env %s refers to $(%s), which is not defined before it" % (where, e["name"], ref))
        seen.add(e["name"])
    for field in ("command", "args"):
        for arg in c.get(field, []) or []:
            for ref in VAR_REF.findall(arg):
                if ref not in seen:
                    errs.append("%s: %s refers to $(%s), which is not in env" % (where, field, ref))


def check_probes_and_resources(where, c, port, tls, errs):
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe) or {}
        # Kubernetes' grpc probe speaks plain text: with TLS on, the port is probed with TCP.
        kind = "tcpSocket" if tls else "grpc"
        if kind not in p:
            errs.append("%s: no %s %s%s" % (where, kind, probe, " (TLS is on: grpc probes cannot pass)" if tls and "grpc" in p else ""))
        elif p[kind].get("port") != port:
            errs.append("%s: %s checks port %s, not %s" % (where, probe, p[kind].get("port"), port))
    res = c.get("resources", {})
    for k in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(k, {}):
                errs.append("%s: no resources.%s.%s" % (where, k, r))
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append("%s: allowPrivilegeEscalation is not false" % where)


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def ignores_preemption(where, job_spec, container, errs):
    """A preempted pod (exit 143, or a DisruptionTarget condition) must be replaced without
    using up a retry, and the policy must be about this container."""
    rules = (job_spec.get("podFailurePolicy") or {}).get("rules", [])
    by_code = [r for r in rules if r.get("action") == "Ignore" and SIGNAL_EXIT in (r.get("onExitCodes") or {}).get("values", [])
               and (r.get("onExitCodes") or {}).get("operator") == "In" and r["onExitCodes"].get("containerName") in (None, container)]
    by_cond = [r for r in rules if r.get("action") == "Ignore" and any(c.get("type") == "DisruptionTarget" for c in r.get("onPodConditions", []))]
    if not by_code:
        errs.append("%s: podFailurePolicy does not ignore exit %d (a preempted %s)" % (where, SIGNAL_EXIT, container))
    if not by_cond:
        errs.append("%s: podFailurePolicy does not ignore DisruptionTarget" % where)


def check_run(objs, path, expect_workers, expect_device, expect_gpu, expect_tls, allow_secret):
    errs = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)

    def one(kind, name):
        found = [o for o in by_kind.get(kind, []) if o["metadata"]["name"] == name]
        if len(found) != 1:
            errs.append("%s: expected one %s %s, found %d" % (path, kind, name, len(found)))
            return None
        return found[0]

    js = one("JobSet", "peftrain")
    cm = one("ConfigMap", "peftrain-config")
    pvc = one("PersistentVolumeClaim", "peftrain-cache")
    pdb = one("PodDisruptionBudget", "peftrain-workers")
    if None in (js, cm, pvc, pdb):
        return errs
    for gone in ("Deployment", "Job", "Service"):
        for o in by_kind.get(gone, []):
            errs.append("%s: %s: a run is one JobSet (its headless Service comes from spec.network)" % (path, name_of(o)))
    if by_kind.get("Secret") and not allow_secret:
        errs.append("%s: the render carries a Secret (%s): tokens are made on the cluster, never in the manifests"
                    % (path, ", ".join(name_of(o) for o in by_kind["Secret"])))

    namespaces = {o["metadata"]["name"] for o in by_kind.get("Namespace", [])}
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] != "Namespace" and ns not in namespaces:
            errs.append("%s: %s is in namespace %r, which the render does not create" % (path, name_of(o), ns))
    namespace = js["metadata"].get("namespace")

    spec = js["spec"]
    rjobs = {rj["name"]: rj for rj in spec.get("replicatedJobs", [])}
    if set(rjobs) != {"coordinator", "workers"}:
        errs.append("%s: replicatedJobs %s, expected coordinator and workers" % (path, sorted(rjobs)))
        return errs
    for name, rj in rjobs.items():
        if rj.get("replicas", 1) != 1:
            errs.append("%s: replicatedJob %s has %s replicas, not 1" % (path, name, rj.get("replicas")))
    # The run's life: done when the coordinator is, restarted (and resumed) when a Job fails.
    sp = spec.get("successPolicy") or {}
    if sp.get("operator") != "All" or sp.get("targetReplicatedJobs") != ["coordinator"]:
        errs.append("%s: successPolicy %r: the run is done when the coordinator's Job is" % (path, sp))
    fp = spec.get("failurePolicy") or {}
    if not isinstance(fp.get("maxRestarts"), int) or fp["maxRestarts"] < 1:
        errs.append("%s: failurePolicy.maxRestarts %r: a failed Job should restart the run (it resumes)" % (path, fp.get("maxRestarts")))
    if not any(r.get("action") == "FailJobSet" and "PodFailurePolicy" in r.get("onJobFailureReasons", []) for r in fp.get("rules", [])):
        errs.append("%s: no failurePolicy rule fails the JobSet when the coordinator refuses its configuration" % path)
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or ttl <= 0:
        errs.append("%s: ttlSecondsAfterFinished %r: a finished run must not keep its objects forever" % (path, ttl))
    net = spec.get("network") or {}
    sub = net.get("subdomain") or js["metadata"]["name"]
    if net.get("enableDNSHostnames") is not True:
        errs.append("%s: network.enableDNSHostnames is not true: workers advertise their pod DNS names" % path)
    if net.get("publishNotReadyAddresses") is False:
        errs.append("%s: network.publishNotReadyAddresses is false: the coordinator dials workers before they are ready" % path)

    def pod(rj):
        return rj["template"]["spec"]["template"]

    def container(rj, name):
        found = [c for c in pod(rj)["spec"].get("containers", []) if c["name"] == name]
        if not found:
            errs.append("%s: no container %s" % (path, name))
            return None
        return found[0]

    coord = container(rjobs["coordinator"], "coordinator")
    worker = container(rjobs["workers"], "worker")
    if coord is None or worker is None:
        return errs

    def host(rj_name, pod_index):
        return "%s-%s-0-%d.%s" % (js["metadata"]["name"], rj_name, pod_index, sub)

    # Coordinator: one pod, never two at once; a refused config fails the Job, preemption does not.
    cjob = rjobs["coordinator"]["template"]["spec"]
    if cjob.get("completions", 1) != 1 or cjob.get("parallelism", 1) != 1:
        errs.append("%s: coordinator Job completions/parallelism %s/%s, not 1/1" % (path, cjob.get("completions"), cjob.get("parallelism")))
    if pod(rjobs["coordinator"])["spec"].get("restartPolicy") != "Never":
        errs.append("%s: coordinator restartPolicy is not Never (podFailurePolicy needs it)" % path)
    ignores_preemption(path + ": coordinator", cjob, "coordinator", errs)
    for who, spec in (("coordinator", cjob), ("workers", rjobs["workers"]["template"]["spec"])):
        rules = (spec.get("podFailurePolicy") or {}).get("rules", [])
        if not any(r.get("action") == "FailJob" and 2 in (r.get("onExitCodes") or {}).get("values", []) for r in rules):
            errs.append("%s: %s podFailurePolicy does not fail the Job on exit 2 (refused input: no retry mends it)" % (path, who))
    targets = [set(r.get("targetReplicatedJobs") or rjobs) for r in fp.get("rules", []) if r.get("action") == "FailJobSet"]
    if not any({"coordinator", "workers"} <= t for t in targets):
        errs.append("%s: the FailJobSet rule does not cover both Jobs' refused input" % path)
    check_probes_and_resources(path + ": coordinator", coord, 50051, expect_tls, errs)
    check_env_refs(path + ": coordinator", coord, errs)
    args = coord.get("args", [])
    for flag in ("coordinator", "--config", "--listen", "--metrics-listen", "--token-file", "--resume"):
        if flag not in args:
            errs.append("%s: coordinator args lack %s" % (path, flag))
    if "--keep-serving" in args:
        errs.append("%s: --keep-serving: in a JobSet the coordinator's exit ends the run" % path)
    grace = pod(rjobs["coordinator"])["spec"].get("terminationGracePeriodSeconds", 30)
    if grace < 30:
        errs.append("%s: coordinator terminationGracePeriodSeconds %s leaves no time for its checkpoint" % (path, grace))
    for c, who in ((coord, "coordinator"), (worker, "worker")):
        if env_value(c, "PEFTRAIN_SIGNAL_EXIT_CODE") != str(SIGNAL_EXIT):
            errs.append("%s: %s PEFTRAIN_SIGNAL_EXIT_CODE %r: exit 0 on SIGTERM would count as done" % (path, who, env_value(c, "PEFTRAIN_SIGNAL_EXIT_CODE")))

    # Workers: an Indexed Job, all at once, replaced per index, stable DNS names.
    wjob = rjobs["workers"]["template"]["spec"]
    n = wjob.get("completions")
    if wjob.get("completionMode") != "Indexed":
        errs.append("%s: workers Job is not Indexed" % path)
    if wjob.get("parallelism") != n:
        errs.append("%s: workers parallelism %s != completions %s" % (path, wjob.get("parallelism"), n))
    if env_value(coord, "PEFTRAIN_WORKERS") != str(n):
        errs.append("%s: coordinator PEFTRAIN_WORKERS %r != the Job's %s workers" % (path, env_value(coord, "PEFTRAIN_WORKERS"), n))
    mw = env_value(coord, "PEFTRAIN_MIN_WORKERS")
    if mw is None or not (1 <= int(mw) <= int(n)):
        errs.append("%s: PEFTRAIN_MIN_WORKERS %r is not in 1..%s" % (path, mw, n))
    rt = env_value(coord, "PEFTRAIN_REGISTER_TIMEOUT")
    if rt is None or not (0 < float(rt) <= 3600):
        errs.append("%s: PEFTRAIN_REGISTER_TIMEOUT %r: the elastic start needs a bounded wait" % (path, rt))
    if expect_workers is not None and n != expect_workers:
        errs.append("%s: %s workers, expected %d" % (path, n, expect_workers))
    ps = pod(rjobs["workers"])["spec"]
    if ps.get("restartPolicy") != "Never" or not wjob.get("backoffLimitPerIndex"):
        errs.append("%s: workers need restartPolicy Never with backoffLimitPerIndex: a failed worker is replaced by a new pod" % path)
    if wjob.get("podReplacementPolicy") != "Failed":
        errs.append("%s: workers podReplacementPolicy %r: two pods would share a hostname" % (path, wjob.get("podReplacementPolicy")))
    ignores_preemption(path + ": workers", wjob, "worker", errs)
    check_probes_and_resources(path + ": worker", worker, 50052, expect_tls, errs)
    check_env_refs(path + ": worker", worker, errs)
    wargs = worker.get("args", [])
    for flag in ("worker", "--coordinator", "--listen", "--advertise", "--id", "--token-file", "--metrics-listen"):
        if flag not in wargs:
            errs.append("%s: worker args lack %s" % (path, flag))
    full = lambda h: "%s.%s.svc.cluster.local" % (h, namespace)
    scheme = "https" if expect_tls else "http"
    coordinator_urls = {"%s://%s:50051" % (scheme, h) for h in (host("coordinator", 0), full(host("coordinator", 0)))}
    if "--coordinator" in wargs and wargs[wargs.index("--coordinator") + 1] not in coordinator_urls:
        errs.append("%s: workers dial %r, not the coordinator pod (%s)" % (path, wargs[wargs.index("--coordinator") + 1], " or ".join(sorted(coordinator_urls))))
    if "--advertise" in wargs:
        adv = wargs[wargs.index("--advertise") + 1]
        want = "$(WORKER_HOST).%s.$(POD_NAMESPACE).svc.cluster.local:50052" % sub
        wh = env_value(worker, "WORKER_HOST")
        if adv != want or wh != "%s-workers-0-$(WORKER_INDEX)" % js["metadata"]["name"]:
            errs.append("%s: worker advertises %r with WORKER_HOST %r, not its JobSet pod name (%s)" % (path, adv, wh, want))
    device = env_value(worker, "PEFTRAIN_DEVICE")
    if expect_device is not None and device != expect_device:
        errs.append("%s: worker device %r, expected %r" % (path, device, expect_device))
    gpu = worker.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if expect_gpu and str(gpu) != "1":
        errs.append("%s: workers' limits nvidia.com/gpu is %r, expected 1" % (path, gpu))
    if not expect_gpu and gpu is not None:
        errs.append("%s: workers ask for nvidia.com/gpu %r" % (path, gpu))

    # Disruptions: one worker at a time.
    labels_c = pod(rjobs["coordinator"])["metadata"].get("labels", {})
    labels_w = pod(rjobs["workers"])["metadata"].get("labels", {})
    if not selects(pdb["spec"].get("selector", {}), labels_w) or selects(pdb["spec"].get("selector", {}), labels_c):
        errs.append("%s: PodDisruptionBudget peftrain-workers does not select exactly the worker pods" % path)
    # Job pods have no scale subresource: only an integer minAvailable lets evictions through.
    ma = pdb["spec"].get("minAvailable")
    if "maxUnavailable" in pdb["spec"] or not isinstance(ma, int) or ma != n - 1:
        errs.append("%s: PodDisruptionBudget minAvailable %r / maxUnavailable %r: for Job pods it must be the integer workers - 1 (%d)"
                    % (path, ma, pdb["spec"].get("maxUnavailable"), n - 1))

    # NetworkPolicy: gRPC only from the run's own pods, metrics only from a labelled namespace.
    policies = by_kind.get("NetworkPolicy", [])
    for who, labels, grpc_from, grpc_port, metrics_port in (
        ("worker", labels_w, [labels_c, labels_w], 50052, 9091),
        ("coordinator", labels_c, [labels_w], 50051, 9090),
    ):
        mine = [p for p in policies if selects(p["spec"].get("podSelector", {}), labels)]
        if len(mine) != 1:
            errs.append("%s: %d NetworkPolicies select the %s pods, expected 1" % (path, len(mine), who))
            continue
        pol = mine[0]["spec"]
        if "Ingress" not in pol.get("policyTypes", []):
            errs.append("%s: %s NetworkPolicy has no Ingress policy type" % (path, who))
        ports_seen = {}
        for rule in pol.get("ingress", []):
            for port in rule.get("ports", []):
                ports_seen.setdefault(port.get("port"), []).extend(rule.get("from", []))
        if set(ports_seen) != {grpc_port, metrics_port}:
            errs.append("%s: %s NetworkPolicy opens ports %s, expected %s" % (path, who, sorted(ports_seen), [grpc_port, metrics_port]))
        peers = ports_seen.get(grpc_port, [])
        if not peers or any("podSelector" not in p or "namespaceSelector" in p or "ipBlock" in p for p in peers):
            errs.append("%s: %s gRPC %d is open beyond the run's pods: %r" % (path, who, grpc_port, peers))
        for want in grpc_from:
            if not any(selects(p.get("podSelector", {}), want) for p in peers):
                errs.append("%s: %s gRPC %d is closed to pods labelled %r" % (path, who, grpc_port, want))
        for p in peers:
            if not any(selects(p.get("podSelector", {}), l) for l in grpc_from) or not (p.get("podSelector") or {}).get("matchLabels"):
                errs.append("%s: %s gRPC %d admits %r" % (path, who, grpc_port, p))
        mpeers = ports_seen.get(metrics_port, [])
        if not mpeers or any(set(p) != {"namespaceSelector"} or not (p["namespaceSelector"].get("matchLabels")) for p in mpeers):
            errs.append("%s: %s metrics %d must be open only to a labelled namespace: %r" % (path, who, metrics_port, mpeers))

    # Every pod: non-root, the token and the cache mounted.
    for owner, c, rj in (("coordinator", coord, rjobs["coordinator"]), ("worker", worker, rjobs["workers"])):
        pspec = pod(rj)["spec"]
        if pspec.get("securityContext", {}).get("runAsNonRoot") is not True:
            errs.append("%s: %s pods do not set runAsNonRoot" % (path, owner))
        vols = {v["name"]: v for v in pspec.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        want = {"/cache": ("persistentVolumeClaim", "claimName", pvc["metadata"]["name"]),
                "/etc/peftrain/token": ("secret", "secretName", "peftrain-token")}
        if owner == "coordinator":
            want["/etc/peftrain/run.toml"] = ("configMap", "name", cm["metadata"]["name"])
        if expect_tls:
            want["/etc/peftrain/tls"] = ("secret", "secretName", "peftrain-tls")
        for mount_path, (vkind, key, target) in want.items():
            vol = vols.get(mounts.get(mount_path, ""), {})
            if vol.get(vkind, {}).get(key) != target:
                errs.append("%s: %s mounts %s from %r, not %s %s" % (path, owner, mount_path, vol, vkind, target))
        tls_env = {k: env_value(c, k) for k in ("PEFTRAIN_TLS_CERT", "PEFTRAIN_TLS_KEY", "PEFTRAIN_TLS_CA")}
        want_env = {"PEFTRAIN_TLS_CERT": "/etc/peftrain/tls/tls.crt", "PEFTRAIN_TLS_KEY": "/etc/peftrain/tls/tls.key",
                    "PEFTRAIN_TLS_CA": "/etc/peftrain/tls/ca.crt"}
        if expect_tls and tls_env != want_env:
            errs.append("%s: %s TLS env %r, expected %r (mutual TLS)" % (path, owner, tls_env, want_env))
        if not expect_tls and any(tls_env.values()):
            errs.append("%s: %s sets TLS flags without certificates in the render" % (path, owner))

    if expect_tls:
        errs += check_certificates(by_kind, path, [host("coordinator", 0), host("workers", n - 1)], namespace)

    # The run's config: TOML, paths on the cache volume.
    text = (cm.get("data") or {}).get("run.toml")
    if text is None:
        errs.append("%s: ConfigMap %s has no run.toml" % (path, cm["metadata"]["name"]))
    else:
        try:
            conf = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            errs.append("%s: run.toml: %s" % (path, e))
            conf = {}
        for key in ("model", "glue_dir", "output_dir"):
            if not str(conf.get(key, "")).startswith("/cache/"):
                errs.append("%s: run.toml %s = %r is not on the cache volume" % (path, key, conf.get(key)))
        for key in conf:
            if "-" in key:
                errs.append("%s: run.toml key %r: flag names take underscores" % (path, key))
    return errs


def check_certificates(by_kind, path, hosts, namespace):
    """The certificate the pods mount names every pod they dial, by the names they dial, for
    both ends of mutual TLS, from a CA issuer whose CA the render also issues."""
    errs = []
    certs = {c["spec"].get("secretName"): c for c in by_kind.get("Certificate", [])}
    issuers = {i["metadata"]["name"]: i for i in by_kind.get("Issuer", [])}
    leaf = certs.get("peftrain-tls")
    if not leaf:
        return ["%s: no Certificate writes the Secret peftrain-tls" % path]
    names = leaf["spec"].get("dnsNames", [])
    for h in hosts:
        fqdn = "%s.%s.svc.cluster.local" % (h, namespace)
        # One wildcard label, as TLS name matching allows.
        if not any(n == fqdn or (n.startswith("*.") and fqdn.split(".", 1)[1] == n[2:]) for n in names):
            errs.append("%s: Certificate peftrain-tls names %s, not %s" % (path, names, fqdn))
    if set(leaf["spec"].get("usages", [])) < {"server auth", "client auth"}:
        errs.append("%s: Certificate peftrain-tls usages %s lack server auth and client auth" % (path, leaf["spec"].get("usages")))
    issuer = issuers.get(leaf["spec"].get("issuerRef", {}).get("name"))
    ca_secret = (issuer or {}).get("spec", {}).get("ca", {}).get("secretName")
    if not ca_secret or not certs.get(ca_secret, {}).get("spec", {}).get("isCA"):
        errs.append("%s: peftrain-tls is not issued by a CA Issuer whose CA Certificate is in the render" % path)
    return errs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", default=kv.latest_version())
    ap.add_argument("--jobset-crd", required=True)
    ap.add_argument("--expect-workers", type=int)
    ap.add_argument("--expect-device")
    ap.add_argument("--expect-gpu", action="store_true")
    ap.add_argument("--expect-tls", action="store_true")
    ap.add_argument("--plain", action="store_true")
    # A user's own overlay may generate the token Secret (docs/deploy.md); ours never do.
    ap.add_argument("--allow-secret", action="store_true")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    jobset_schema = crd_schema(a.jobset_crd, "v1alpha2")
    errs = []
    total = 0
    for path in a.files:
        objs = load(path)
        if not objs:
            errs.append("%s: no objects" % path)
            continue
        total += len(objs)
        errs += schema_errors(objs, a.k8s_version, path, jobset_schema)
        if not a.plain:
            errs += check_run(objs, path, a.expect_workers, a.expect_device, a.expect_gpu, a.expect_tls, a.allow_secret)
    for e in errs:
        print("  " + e)
    print("  %d objects; Kubernetes %s schemas (kubernetes-validate %s, strict), the JobSet CRD %s, cert-manager's validators: %s"
          % (total, a.k8s_version, kv.__version__, os.path.basename(a.jobset_crd), "%d problems" % len(errs) if errs else "valid"))
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
