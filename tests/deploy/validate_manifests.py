#!/usr/bin/env python3
"""Validates rendered peftrain manifests: every object against the Kubernetes JSON schemas that
kubernetes-validate carries (offline, strict: unknown fields are errors, and an object whose
kind has no schema is an error too, not the library's warning), then what the schemas cannot
see: the pieces issue 6 asks for and the cross-references between objects.

    validate_manifests.py [--k8s-version X.Y.Z] [--expect-workers N] [--expect-device D]
                          [--expect-gpu] [--plain] FILE...

--plain: FILE is a bare manifest (no peftrain run in it): schema checks only.
Prints one line per problem; exit 1 if any.
"""

import argparse
import re
import sys
import tomllib

import yaml
import kubernetes_validate.utils as kv

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def schema_errors(objs, version, path):
    errs = []
    for o in objs:
        name = "%s/%s" % (o.get("kind", "?"), o.get("metadata", {}).get("name", "?"))
        try:
            kv.validate(o, version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            errs.append("%s: %s does not validate against Kubernetes %s: %s: %s"
                        % (path, name, e.version, where, e.message))
        except kv.SchemaNotFoundError as e:
            errs.append("%s: %s: %s" % (path, name, e.message))
        except kv.VersionNotSupportedError as e:
            errs.append("kubernetes-validate %s has no schemas for Kubernetes %s"
                        % (kv.__version__, e.version))
    return errs


def pod_spec(o):
    return o["spec"]["template"]["spec"]


def containers(o):
    return pod_spec(o).get("containers", [])


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
                errs.append("%s: env %s refers to $(%s), which is not defined before it"
                            % (where, e["name"], ref))
        seen.add(e["name"])
    for field in ("command", "args"):
        for arg in c.get(field, []) or []:
            for ref in VAR_REF.findall(arg):
                if ref not in seen:
                    errs.append("%s: %s refers to $(%s), which is not in env" % (where, field, ref))


def check_probes_and_resources(where, c, port, errs):
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if not p or "grpc" not in p:
            errs.append("%s: no grpc %s" % (where, probe))
        elif p["grpc"].get("port") != port:
            errs.append("%s: %s checks port %s, not %s" % (where, probe, p["grpc"].get("port"), port))
    res = c.get("resources", {})
    for k in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(k, {}):
                errs.append("%s: no resources.%s.%s" % (where, k, r))
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append("%s: allowPrivilegeEscalation is not false" % where)


def check_run(objs, path, expect_workers, expect_device, expect_gpu):
    errs = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)

    def one(kind, name_prefix):
        found = [o for o in by_kind.get(kind, []) if o["metadata"]["name"].startswith(name_prefix)]
        if len(found) != 1:
            errs.append("%s: expected one %s %s*, found %d" % (path, kind, name_prefix, len(found)))
            return None
        return found[0]

    dep = one("Deployment", "peftrain-coordinator")
    job = one("Job", "peftrain-workers")
    cm = one("ConfigMap", "peftrain-config")
    secret = one("Secret", "peftrain-token")
    pvc = one("PersistentVolumeClaim", "peftrain-cache")
    services = {o["metadata"]["name"]: o for o in by_kind.get("Service", [])}
    if None in (dep, job, cm, secret, pvc):
        return errs

    namespaces = {o["metadata"]["name"] for o in by_kind.get("Namespace", [])}
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] != "Namespace" and ns not in namespaces:
            errs.append("%s: %s/%s is in namespace %r, which the render does not create"
                        % (path, o["kind"], o["metadata"]["name"], ns))

    # Coordinator: one replica, never two at once; a Service with the gRPC and metrics ports.
    if dep["spec"].get("replicas") != 1:
        errs.append("%s: coordinator replicas is %s, not 1" % (path, dep["spec"].get("replicas")))
    if dep["spec"].get("strategy", {}).get("type") != "Recreate":
        errs.append("%s: coordinator strategy is not Recreate" % path)
    svc = services.get("peftrain-coordinator")
    if not svc:
        errs.append("%s: no Service peftrain-coordinator" % path)
    else:
        ports = {p["port"] for p in svc["spec"]["ports"]}
        if not {50051, 9090} <= ports:
            errs.append("%s: Service peftrain-coordinator ports %s lack 50051 and 9090" % (path, sorted(ports)))
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
            errs.append("%s: Service peftrain-coordinator does not select the coordinator pods" % path)
    (coord,) = [c for c in containers(dep) if c["name"] == "coordinator"] or [None]
    if coord is None:
        errs.append("%s: no container coordinator" % path)
        return errs
    check_probes_and_resources(path + ": coordinator", coord, 50051, errs)
    check_env_refs(path + ": coordinator", coord, errs)
    args = coord.get("args", [])
    for flag in ("coordinator", "--config", "--listen", "--metrics-listen", "--token-file", "--resume"):
        if flag not in args:
            errs.append("%s: coordinator args lack %s" % (path, flag))

    # Workers: an Indexed Job, all at once, stable DNS names through a headless Service.
    js = job["spec"]
    n = js.get("completions")
    if js.get("completionMode") != "Indexed":
        errs.append("%s: workers Job is not Indexed" % path)
    if js.get("parallelism") != n:
        errs.append("%s: workers parallelism %s != completions %s" % (path, js.get("parallelism"), n))
    if env_value(coord, "PEFTRAIN_WORKERS") != str(n):
        errs.append("%s: coordinator PEFTRAIN_WORKERS %r != the Job's %s workers"
                    % (path, env_value(coord, "PEFTRAIN_WORKERS"), n))
    mw = env_value(coord, "PEFTRAIN_MIN_WORKERS")
    if mw is None or not (1 <= int(mw) <= int(n)):
        errs.append("%s: PEFTRAIN_MIN_WORKERS %r is not in 1..%s" % (path, mw, n))
    if expect_workers is not None and n != expect_workers:
        errs.append("%s: %s workers, expected %d" % (path, n, expect_workers))
    ps = pod_spec(job)
    sub = ps.get("subdomain")
    hl = services.get(sub or "")
    if not hl:
        errs.append("%s: workers' subdomain %r names no Service" % (path, sub))
    else:
        if hl["spec"].get("clusterIP") != "None":
            errs.append("%s: Service %s is not headless" % (path, sub))
        labels = job["spec"]["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in hl["spec"]["selector"].items()):
            errs.append("%s: Service %s does not select the worker pods" % (path, sub))
    # A failed worker pod must be replaced (the replacement rejoins the run).
    if ps.get("restartPolicy") == "Never":
        if not js.get("backoffLimitPerIndex") and not js.get("backoffLimit"):
            errs.append("%s: restartPolicy Never without a backoff limit: a failed worker is not replaced" % path)
    elif ps.get("restartPolicy") != "OnFailure":
        errs.append("%s: workers' restartPolicy %r" % (path, ps.get("restartPolicy")))
    (worker,) = [c for c in ps.get("containers", []) if c["name"] == "worker"] or [None]
    if worker is None:
        errs.append("%s: no container worker" % path)
        return errs
    check_probes_and_resources(path + ": worker", worker, 50052, errs)
    check_env_refs(path + ": worker", worker, errs)
    wargs = worker.get("args", [])
    for flag in ("worker", "--coordinator", "--listen", "--advertise", "--id", "--token-file", "--metrics-listen"):
        if flag not in wargs:
            errs.append("%s: worker args lack %s" % (path, flag))
    if "--advertise" in wargs:
        adv = wargs[wargs.index("--advertise") + 1]
        if ".%s." % sub not in adv:
            errs.append("%s: worker advertises %r, not a name under the headless Service %s" % (path, adv, sub))
    if "--coordinator" in wargs:
        url = wargs[wargs.index("--coordinator") + 1]
        if url != "http://peftrain-coordinator:50051":
            errs.append("%s: workers dial %r" % (path, url))
    device = env_value(worker, "PEFTRAIN_DEVICE")
    if expect_device is not None and device != expect_device:
        errs.append("%s: worker device %r, expected %r" % (path, device, expect_device))
    gpu = worker.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if expect_gpu and str(gpu) != "1":
        errs.append("%s: workers' limits nvidia.com/gpu is %r, expected 1" % (path, gpu))
    if not expect_gpu and gpu is not None:
        errs.append("%s: workers ask for nvidia.com/gpu %r" % (path, gpu))

    # Every pod: non-root, the token and the cache mounted from objects of this render.
    if "token" not in (secret.get("data") or {}) and "token" not in (secret.get("stringData") or {}):
        errs.append("%s: Secret %s has no key token" % (path, secret["metadata"]["name"]))
    for owner, c in (("coordinator", coord), ("worker", worker)):
        spec = pod_spec(dep if owner == "coordinator" else job)
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            errs.append("%s: %s pods do not set runAsNonRoot" % (path, owner))
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        want = {"/cache": ("persistentVolumeClaim", "claimName", pvc["metadata"]["name"]),
                "/etc/peftrain/token": ("secret", "secretName", secret["metadata"]["name"])}
        if owner == "coordinator":
            want["/etc/peftrain/run.toml"] = ("configMap", "name", cm["metadata"]["name"])
        for mount_path, (vkind, key, target) in want.items():
            vol = vols.get(mounts.get(mount_path, ""), {})
            if vol.get(vkind, {}).get(key) != target:
                errs.append("%s: %s mounts %s from %r, not %s %s"
                            % (path, owner, mount_path, vol, vkind, target))

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", default=kv.latest_version())
    ap.add_argument("--expect-workers", type=int)
    ap.add_argument("--expect-device")
    ap.add_argument("--expect-gpu", action="store_true")
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    errs = []
    total = 0
    for path in a.files:
        objs = load(path)
        if not objs:
            errs.append("%s: no objects" % path)
            continue
        total += len(objs)
        errs += schema_errors(objs, a.k8s_version, path)
        if not a.plain:
            errs += check_run(objs, path, a.expect_workers, a.expect_device, a.expect_gpu)
    for e in errs:
        print("  " + e)
    print("  %d objects, Kubernetes %s schemas (kubernetes-validate %s, strict): %s"
          % (total, a.k8s_version, kv.__version__, "%d problems" % len(errs) if errs else "valid"))
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
