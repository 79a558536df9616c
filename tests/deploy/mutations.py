#!/usr/bin/env python3
"""Checks that validate_manifests.py refuses broken renders: each mutation of a rendered dev
overlay breaks one rule the deployment relies on, and the validator must fail on every one.

    mutations.py RENDERED_DEV_YAML RENDERED_GPU_TLS_YAML JOBSET_CRD
"""

import copy
import os
import subprocess
import sys
import tempfile

import yaml

VALIDATOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validate_manifests.py")


def jobset(o):
    return [x for x in o if x["kind"] == "JobSet"][0]


def job(o, i):
    return jobset(o)["spec"]["replicatedJobs"][i]["template"]["spec"]


def pod(o, i):
    return job(o, i)["template"]["spec"]


def policy(o, name):
    return [p for p in o if p["kind"] == "NetworkPolicy" and p["metadata"]["name"] == name][0]["spec"]


MUTATIONS = {
    "an unknown JobSet field": lambda o: jobset(o)["spec"].update(bogus=1),
    "an unknown pod field inside the JobSet": lambda o: pod(o, 1).update(hostnetwork=True),
    "a bad enum in the JobSet": lambda o: jobset(o)["spec"]["failurePolicy"].update(restartStrategy="Sometimes"),
    "no success policy": lambda o: jobset(o)["spec"].pop("successPolicy"),
    "no ttl": lambda o: jobset(o)["spec"].pop("ttlSecondsAfterFinished"),
    "workers exit 0 when preempted": lambda o: pod(o, 1)["containers"][0]["env"].pop(),
    "preemption counted as a failure": lambda o: job(o, 1)["podFailurePolicy"].update(
        rules=[r for r in job(o, 1)["podFailurePolicy"]["rules"] if 143 not in (r.get("onExitCodes") or {}).get("values", [])]
    ),
    "a worker's refused token retried": lambda o: job(o, 1)["podFailurePolicy"].update(
        rules=[r for r in job(o, 1)["podFailurePolicy"]["rules"] if r.get("action") != "FailJob"]
    ),
    "a token in the render": lambda o: o.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "peftrain-token", "namespace": "peftrain"}, "stringData": {"token": "x"}}
    ),
    "worker gRPC open to every namespace": lambda o: policy(o, "peftrain-workers")["ingress"][0]["from"].append({"namespaceSelector": {}}),
    "metrics open to everyone": lambda o: policy(o, "peftrain-coordinator")["ingress"][1].pop("from"),
    "a PDB that selects the coordinator too": lambda o: [p for p in o if p["kind"] == "PodDisruptionBudget"][0]["spec"]["selector"][
        "matchLabels"
    ].pop("app.kubernetes.io/component"),
    "a PDB that never lets a drain through (maxUnavailable on Job pods)": lambda o: [p for p in o if p["kind"] == "PodDisruptionBudget"][0][
        "spec"
    ].update(maxUnavailable=1),
    "workers dialling another host": lambda o: pod(o, 1)["containers"][0]["args"].__setitem__(2, "http://peftrain-coordinator:50051"),
    "a Deployment beside the JobSet": lambda o: o.append(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "extra", "namespace": "peftrain"},
         "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    ),
}


def certificate(o, name):
    return [c for c in o if c["kind"] == "Certificate" and c["metadata"]["name"] == name][0]["spec"]


# Broken renders of the gpu-tls overlay (validated with --expect-tls).
TLS_MUTATIONS = {
    "an unknown Certificate field": lambda o: certificate(o, "peftrain-tls").update(dnsName=["x"]),
    "an unknown nested cert-manager field": lambda o: certificate(o, "peftrain-tls")["privateKey"].update(sizee=256),
    "a bad cert-manager enum": lambda o: certificate(o, "peftrain-tls")["usages"].append("world domination"),
    "a certificate that does not name the pods": lambda o: certificate(o, "peftrain-tls").update(dnsNames=["peftrain.example.com"]),
    "a certificate without client auth": lambda o: certificate(o, "peftrain-tls").update(usages=["server auth"]),
    "workers without the CA (no mutual TLS)": lambda o: pod(o, 1)["containers"][0]["env"].pop(),
    "grpc probes behind TLS": lambda o: pod(o, 0)["containers"][0].update(readinessProbe={"grpc": {"port": 50051}}),
}


def refused(objs, mutations, crd, extra, d):
    accepted = []
    for what, mutate in mutations.items():
        o = copy.deepcopy(objs)
        mutate(o)
        path = os.path.join(d, "mutated.yaml")
        with open(path, "w") as f:
            yaml.safe_dump_all(o, f)
        p = subprocess.run([sys.executable, VALIDATOR, "--jobset-crd", crd, *extra, path], capture_output=True, text=True)
        if p.returncode == 0:
            accepted.append(what)
    return accepted


def main():
    dev, tls, crd = sys.argv[1], sys.argv[2], sys.argv[3]
    load = lambda p: [o for o in yaml.safe_load_all(open(p)) if o]
    with tempfile.TemporaryDirectory() as d:
        # The unbroken renders pass, so each refusal below is the mutation's doing.
        if refused(load(dev), {"none": lambda o: None}, crd, [], d) != ["none"] or refused(load(tls), {"none": lambda o: None}, crd, ["--expect-tls", "--expect-gpu"], d) != ["none"]:
            print("the unbroken renders do not validate")
            return 1
        accepted = refused(load(dev), MUTATIONS, crd, [], d) + refused(load(tls), TLS_MUTATIONS, crd, ["--expect-tls", "--expect-gpu"], d)
    n = len(MUTATIONS) + len(TLS_MUTATIONS)
    print("%d of %d broken renders refused%s" % (n - len(accepted), n, "; accepted: " + ", ".join(accepted) if accepted else ""))
    return 1 if accepted else 0


if __name__ == "__main__":
    sys.exit(main())
