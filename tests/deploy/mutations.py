#!/usr/bin/env python3
"""Checks that validate_manifests.py refuses broken renders: each mutation of a rendered dev
overlay breaks one rule the deployment relies on, and the validator must fail on every one.

    mutations.py RENDERED_DEV_YAML JOBSET_CRD
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
    "preemption counted as a failure": lambda o: job(o, 1)["podFailurePolicy"]["rules"].pop(0),
    "a token in the render": lambda o: o.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "peftrain-token", "namespace": "peftrain"}, "stringData": {"token": "x"}}
    ),
    "worker gRPC open to every namespace": lambda o: policy(o, "peftrain-workers")["ingress"][0]["from"].append({"namespaceSelector": {}}),
    "metrics open to everyone": lambda o: policy(o, "peftrain-coordinator")["ingress"][1].pop("from"),
    "a PDB that selects the coordinator too": lambda o: [p for p in o if p["kind"] == "PodDisruptionBudget"][0]["spec"]["selector"][
        "matchLabels"
    ].pop("app.kubernetes.io/component"),
    "workers dialling another host": lambda o: pod(o, 1)["containers"][0]["args"].__setitem__(2, "http://peftrain-coordinator:50051"),
    "a Deployment beside the JobSet": lambda o: o.append(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "extra", "namespace": "peftrain"},
         "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    ),
}


def main():
    rendered, crd = sys.argv[1], sys.argv[2]
    with open(rendered) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    accepted = []
    with tempfile.TemporaryDirectory() as d:
        for what, mutate in MUTATIONS.items():
            o = copy.deepcopy(objs)
            mutate(o)
            path = os.path.join(d, "mutated.yaml")
            with open(path, "w") as f:
                yaml.safe_dump_all(o, f)
            p = subprocess.run([sys.executable, VALIDATOR, "--jobset-crd", crd, path], capture_output=True, text=True)
            if p.returncode == 0:
                accepted.append(what)
    print("%d of %d broken renders refused%s" % (len(MUTATIONS) - len(accepted), len(MUTATIONS), "; accepted: " + ", ".join(accepted) if accepted else ""))
    return 1 if accepted else 0


if __name__ == "__main__":
    sys.exit(main())
