#!/usr/bin/env python3
"""Runs a rendered peftrain JobSet as local processes, as the cluster would run its pods, so
that the manifests and the binaries cannot drift apart: every pod's container gets exactly its
args and env (downward API fields, resource fields, $(VAR) references resolved as the kubelet
resolves them), with only what a single machine cannot have mapped:

- the JobSet's pod DNS names (<jobset>-<job>-<j>-<i>.<subdomain>[.<ns>.svc[.cluster.local]])
  and every container port to 127.0.0.1 ports, and 0.0.0.0:PORT listens to those ports;
- volumes to directories (claims shared by every pod, configMaps and Secrets written as
  files, emptyDirs per pod), mount paths rewritten in args, env values and mounted config files;
- Secrets that are not in the render from --secret NAME/KEY=VALUE; cert-manager Certificates
  issued with openssl by a CA of the run (their dnsNames, plus IP 127.0.0.1 since every name
  now is that address);
- --env NAME=VALUE overrides, printed (a CPU machine running a GPU overlay: PEFTRAIN_DEVICE).

The run ends as the JobSet's successPolicy says (the coordinator's Job completing) or fails on
the first pod that exits non-zero or at --timeout; every process is then gone. Prints a JSON
summary last: {"pods": {hostname: exit status}, "paths": {claim: directory}}.

    run_rendered.py RENDERED.yaml --bin PEFTRAIN --work DIR [--secret NAME/KEY=VALUE]...
        [--populate /MOUNT/PATH=SOURCE]... [--env NAME=VALUE]... [--timeout SECONDS]
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import yaml

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantity(q):
    """A Kubernetes resource quantity as a number (cpu "500m" -> 0.5, "4" -> 4)."""
    q = str(q)
    for suffix, mult in (("m", 1e-3), ("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * mult
    return float(q)


def expand(text, env):
    """$(VAR) -> its value where VAR is defined; $$ escapes; unknown references stay as is."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = VAR_REF.match(text, i)
        if m and m.group(1) in env:
            out.append(env[m.group(1)])
            i = m.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


class Pod:
    def __init__(self, js, rj, job_index, pod_index, namespace, subdomain):
        self.rj = rj
        self.job = rj["template"]["spec"]
        self.template = self.job["template"]
        self.hostname = "%s-%s-%d-%d" % (js["metadata"]["name"], rj["name"], job_index, pod_index)
        self.name = "%s-%05x" % (self.hostname, (os.getpid() * 7919 + pod_index) % 0xFFFFF)
        self.namespace = namespace
        self.dns = [self.hostname + "." + subdomain, "%s.%s.%s.svc" % (self.hostname, subdomain, namespace),
                    "%s.%s.%s.svc.cluster.local" % (self.hostname, subdomain, namespace)]
        self.annotations = dict(self.template.get("metadata", {}).get("annotations", {}))
        if self.job.get("completionMode") == "Indexed":
            self.annotations["batch.kubernetes.io/job-completion-index"] = str(pod_index)
        self.labels = dict(self.template.get("metadata", {}).get("labels", {}))
        self.ports = {}  # containerPort -> local port
        for c in self.template["spec"].get("containers", []):
            for p in c.get("ports", []):
                self.ports[p["containerPort"]] = free_port()


def field_ref(pod, path):
    if path == "metadata.name":
        return pod.name
    if path == "metadata.namespace":
        return pod.namespace
    m = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if m:
        src = pod.annotations if m.group(1) == "annotations" else pod.labels
        if m.group(2) not in src:
            raise SystemExit("%s: fieldRef %s: no such %s" % (pod.hostname, path, m.group(1)[:-1]))
        return src[m.group(2)]
    raise SystemExit("%s: fieldRef %s is not one this runner knows" % (pod.hostname, path))


def issue_certificates(objs, work, secrets):
    """cert-manager's part: a CA Certificate becomes a self-signed CA, a Certificate from a CA
    Issuer a leaf it signs, each written to its Secret (tls.crt, tls.key, ca.crt)."""
    certs = [o for o in objs if o.get("kind") == "Certificate" and str(o.get("apiVersion", "")).startswith("cert-manager.io/")]
    issuers = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "Issuer"}
    d = os.path.join(work, "cert-manager")
    os.makedirs(d, exist_ok=True)

    def run(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True)

    issued = {}
    for c in sorted(certs, key=lambda c: not c["spec"].get("isCA")):
        secret = c["spec"]["secretName"]
        key, crt = os.path.join(d, secret + ".key"), os.path.join(d, secret + ".crt")
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
        if c["spec"].get("isCA"):
            run("req", "-x509", "-new", "-key", key, "-subj", "/CN=" + c["spec"].get("commonName", secret), "-days", "2",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", crt)
            ca_crt = crt
        else:
            ca_secret = issuers[c["spec"]["issuerRef"]["name"]]["spec"]["ca"]["secretName"]
            ca_key, ca_crt = issued[ca_secret]
            sans = ",".join(["DNS:" + n for n in c["spec"].get("dnsNames", [])] + ["IP:127.0.0.1"])
            eku = ",".join({"server auth": "serverAuth", "client auth": "clientAuth"}[u] for u in c["spec"].get("usages", []))
            ext = os.path.join(d, secret + ".ext")
            with open(ext, "w") as f:
                f.write("basicConstraints=CA:FALSE\nsubjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=digitalSignature\n" % (sans, eku))
            csr = os.path.join(d, secret + ".csr")
            run("req", "-new", "-key", key, "-subj", "/CN=" + secret, "-out", csr)
            run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", crt)
        issued[secret] = (key, crt)
        secrets[secret] = {"tls.key": open(key).read(), "tls.crt": open(crt).read(), "ca.crt": open(ca_crt).read()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--bin", required=True, help="the image's entry point (peftrain)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--secret", action="append", default=[], help="NAME/KEY=VALUE for a Secret the render leaves out")
    ap.add_argument("--populate", action="append", default=[], help="/MOUNT/PATH=SOURCE: put SOURCE there (a symlink)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for every container, replacing the manifest's")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()

    objs = [o for o in yaml.safe_load_all(open(a.rendered)) if o]
    (js,) = [o for o in objs if o.get("kind") == "JobSet"]
    namespace = js["metadata"].get("namespace", "default")
    subdomain = (js["spec"].get("network") or {}).get("subdomain") or js["metadata"]["name"]
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o.get("kind") == "ConfigMap"}
    secrets = {}
    for o in objs:
        if o.get("kind") == "Secret":
            import base64
            secrets[o["metadata"]["name"]] = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
            secrets[o["metadata"]["name"]].update(o.get("stringData") or {})
    for s in a.secret:
        name_key, value = s.split("=", 1)
        name, key = name_key.split("/", 1)
        secrets.setdefault(name, {})[key] = value
    issue_certificates(objs, a.work, secrets)
    overrides = dict(e.split("=", 1) for e in a.env)

    pods = []
    for rj in js["spec"]["replicatedJobs"]:
        spec = rj["template"]["spec"]
        n = spec.get("completions", 1)
        if spec.get("parallelism", n) != n:
            raise SystemExit("replicatedJob %s: parallelism %s != completions %s: this runner starts all at once" % (rj["name"], spec.get("parallelism"), n))
        for j in range(rj.get("replicas", 1)):
            for i in range(n):
                pods.append(Pod(js, rj, j, i, namespace, subdomain))

    # name:port -> 127.0.0.1:local, for every pod's every DNS name and port.
    addresses = {}
    for p in pods:
        for port, local in p.ports.items():
            for name in p.dns:
                addresses["%s:%d" % (name, port)] = "127.0.0.1:%d" % local

    addr_re = re.compile("|".join(re.escape(n) for n in sorted(addresses, key=len, reverse=True)))
    claims = {}
    procs = []
    launches = []
    logs = os.path.join(a.work, "logs")
    os.makedirs(logs, exist_ok=True)
    for p in pods:
        root = os.path.join(a.work, "pods", p.hostname)
        vols = {}
        for v in p.template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                claims[claim] = vols[v["name"]] = os.path.join(a.work, "claims", claim)
            elif "emptyDir" in v:
                vols[v["name"]] = os.path.join(root, "emptydir", v["name"])
            elif "configMap" in v or "secret" in v:
                kind, ref = ("configMap", v["configMap"]["name"]) if "configMap" in v else ("secret", v["secret"]["secretName"])
                data = (configmaps if kind == "configMap" else secrets).get(ref)
                if data is None:
                    raise SystemExit("%s: volume %s: %s %s is neither in the render nor given" % (p.hostname, v["name"], kind, ref))
                vols[v["name"]] = os.path.join(root, kind, v["name"])
                p.__dict__.setdefault("files", []).append((vols[v["name"]], data))
            else:
                raise SystemExit("%s: volume %s: a kind this runner does not map" % (p.hostname, v["name"]))
            os.makedirs(vols[v["name"]], exist_ok=True)
        for c in p.template["spec"]["containers"]:
            mounts = []
            for m in c.get("volumeMounts", []):
                src = vols[m["name"]]
                mounts.append((m["mountPath"], os.path.join(src, m["subPath"]) if m.get("subPath") else src))
            mounts.sort(key=lambda m: -len(m[0]))

            # One pass over all mount paths, longest first, so a rewritten path (the work
            # directory may itself be under a mount path such as /tmp) is never rewritten again.
            by_path = dict(mounts)
            mount_re = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(m) for m, _ in mounts) + r")(?=/|\b|$)") if mounts else None

            def paths(text):
                return mount_re.sub(lambda m: by_path[m.group(1)], text) if mount_re else text

            def net(text):
                text = addr_re.sub(lambda m: addresses[m.group(0)], text)
                m = re.fullmatch(r"0\.0\.0\.0:(\d+)", text)
                if m and int(m.group(1)) in p.ports:
                    text = "127.0.0.1:%d" % p.ports[int(m.group(1))]
                return text

            # Mounted config files see the same paths as the process.
            for d, data in getattr(p, "files", []):
                for k, text in data.items():
                    with open(os.path.join(d, k), "w") as f:
                        f.write(paths(text))
                    os.chmod(os.path.join(d, k), 0o600)
            env = {}
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = expand(e["value"], env)
                elif "fieldRef" in e.get("valueFrom", {}):
                    env[e["name"]] = field_ref(p, e["valueFrom"]["fieldRef"]["fieldPath"])
                elif "resourceFieldRef" in e.get("valueFrom", {}):
                    r = e["valueFrom"]["resourceFieldRef"]
                    kind, res = r["resource"].split(".", 1)
                    target = [x for x in p.template["spec"]["containers"] if x["name"] == r.get("containerName", c["name"])][0]
                    amount = quantity(target["resources"][kind][res])
                    env[e["name"]] = str(math.ceil(amount / quantity(r.get("divisor", "1"))))
                else:
                    raise SystemExit("%s: env %s: a source this runner does not know" % (p.hostname, e["name"]))
            for k, v in overrides.items():
                if k in env and env[k] != v:
                    print("override %s %s: %s -> %s" % (p.hostname, k, env[k], v))
                env[k] = v
            env = {k: net(paths(v)) for k, v in env.items()}
            args = [net(paths(expand(x, env))) for x in (c.get("command") or []) + (c.get("args") or [])]
            proc_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.path.join(root, "home")}
            for keep in ("LD_LIBRARY_PATH", "RUST_LOG"):
                if keep in os.environ:
                    proc_env[keep] = os.environ[keep]
            proc_env.update(env)
            os.makedirs(proc_env["HOME"], exist_ok=True)
            # Fill the volumes as the cache loader would, before anyone reads them.
            for item in a.populate:
                mount, src = item.split("=", 1)
                for m_path, local in mounts:
                    if mount.startswith(m_path + "/") and not os.path.lexists(local + mount[len(m_path):]):
                        dst = local + mount[len(m_path):]
                        os.makedirs(os.path.dirname(dst), exist_ok=True)
                        os.symlink(os.path.abspath(src), dst)
            cmd = args if c.get("command") else [a.bin] + args
            launches.append((p, cmd, proc_env))
    for p, cmd, proc_env in launches:
        log = open(os.path.join(logs, p.hostname + ".log"), "w")
        print("start %s: %s" % (p.hostname, " ".join(cmd[1:] if cmd[0] == a.bin else cmd)), flush=True)
        procs.append((p, subprocess.Popen(cmd, env=proc_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)))

    # The JobSet's success policy: the targeted Jobs complete. Any failure ends the run here
    # (the cluster would retry; a test wants the first cause).
    targets = set((js["spec"].get("successPolicy") or {}).get("targetReplicatedJobs") or [rj["name"] for rj in js["spec"]["replicatedJobs"]])
    deadline = time.time() + a.timeout
    status = {}
    failed = None
    try:
        while True:
            for p, proc in procs:
                if p.hostname not in status and proc.poll() is not None:
                    status[p.hostname] = proc.returncode
                    print("exit %s: %d" % (p.hostname, proc.returncode), flush=True)
                    if proc.returncode != 0 and failed is None:
                        failed = p.hostname
            done = all(p.hostname in status for p, _ in procs if p.rj["name"] in targets)
            if failed or done or time.time() > deadline:
                break
            time.sleep(0.1)
        if done and not failed:
            # The rest (workers told to exit by the coordinator) get a grace period.
            grace = time.time() + 30
            while time.time() < grace and any(proc.poll() is None for _, proc in procs):
                time.sleep(0.1)
            for p, proc in procs:
                if p.hostname not in status and proc.poll() is not None:
                    status[p.hostname] = proc.returncode
    finally:
        for p, proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status.setdefault(p.hostname, "killed")
    ok = done and not failed and all(v == 0 for v in status.values())
    if not ok:
        why = "pod %s failed" % failed if failed else ("timed out after %.0f s" % a.timeout if not done else "a pod did not exit 0")
        print("FAILED: %s" % why)
        for p, _ in procs:
            with open(os.path.join(logs, p.hostname + ".log")) as f:
                tail = f.read().splitlines()[-25:]
            print("--- %s (exit %s)\n%s" % (p.hostname, status.get(p.hostname), "\n".join(tail)))
    print(json.dumps({"pods": status, "paths": claims}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
