#!/usr/bin/env python3
"""The all-reduce alone (issue 18): N `peftrain-worker allreduce-bench` processes (the training
code path: Comm::setup, the Collective service, AllReduce::all_reduce of a host buffer) for each
worker count, buffer size (BitFit's, LoRA's and full fine-tuning's gradients) and link latency,
each algorithm side by side. A latency is simulated by `peftrain-delay-proxy` in front of every
worker (each direction of every peer-to-peer connection delayed by it; this kernel has no
netem). Every result is checked: the first all-reduce of each measurement must equal the
closed-form sum exactly on every worker, with the same digest (bit-identical) on all.

Prints the table of time per all-reduce, the alpha-beta fit per latency (t = rounds * alpha +
critical-path bytes * beta), the checks of the issue's goals, and writes --json
(bench/results/allreduce.json). Bounded: every answer has a deadline, and once --budget seconds
are spent the measurements left are skipped (and listed as skipped).

    allreduce.py --worker BIN --proxy BIN [--workers 2,4,8,16,32] [--sizes 100000,300000,90000000]
                 [--latencies 0,0.5,2] [--algorithms ring,halving-doubling] [--budget 1500] [--json OUT]
"""

import argparse
import json
import math
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time

TOKEN = "allreduce-bench-token-%08x" % random.SystemRandom().getrandbits(32)


def cpu_class():
    try:
        info = open("/proc/cpuinfo").read()
        model = re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
    except (OSError, AttributeError):
        return "unknown CPU"
    feats = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if re.search(r"\b%s\b" % f, info)]
    return "%s (%s, %d cores)" % (model, " ".join(feats) or "no AVX2", os.cpu_count() or 0)


def power_of_two_below(n):
    return 1 << (n.bit_length() - 1)


def critical_path(alg, n, nbytes):
    """Rounds and bytes on the critical path, as peftrain_spec::collective::critical_path."""
    if n <= 1:
        return 0, 0.0
    if alg == "halving-doubling":
        p = power_of_two_below(n)
        log = p.bit_length() - 1
        core = 2.0 * (p - 1) / p * nbytes
        return (2 * log, core) if p == n else (2 * log + 2, core + 2.0 * nbytes)
    return 2 * (n - 1), 2.0 * (n - 1) / n * nbytes


class Proc:
    """A process whose stdout lines arrive on a queue (so every read can have a deadline)."""

    def __init__(self, cmd, env):
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        self.q = queue.Queue()
        self.err = []
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self):
        for line in self.p.stdout:
            self.q.put(line)
        self.q.put(None)

    def _err(self):
        for line in self.p.stderr:
            self.err.append(line.rstrip("\n"))

    def line(self, deadline):
        try:
            line = self.q.get(timeout=max(0.01, deadline - time.time()))
        except queue.Empty:
            raise TimeoutError("no answer in time")
        if line is None:
            raise RuntimeError("exited %s: %s" % (self.p.poll(), " | ".join(self.err[-5:])))
        return line

    def send(self, obj):
        self.p.stdin.write(json.dumps(obj) + "\n")
        self.p.stdin.flush()

    def stop(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def start_workers(a, n, env):
    procs = [Proc([a.worker, "allreduce-bench", "--listen", "127.0.0.1:0", "--worker-timeout", str(a.peer_timeout)], env) for _ in range(n)]
    deadline = time.time() + 120
    addrs = [json.loads(p.line(deadline))["listening"] for p in procs]
    return procs, addrs


def start_proxy(a, addrs, latency_ms):
    cmd = [a.proxy, "--delay-ms", str(latency_ms)] + ["127.0.0.1:0=%s" % t for t in addrs]
    p = Proc(cmd, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    deadline = time.time() + 30
    fronts = {}
    for _ in addrs:
        bound, target = p.line(deadline).strip().split("=", 1)
        fronts[target] = bound
    return p, [fronts[t] for t in addrs]


def measure(procs, peers, alg, elems, iters, generation, limit):
    # Every worker takes the group (and the buffer's length) before any starts sending.
    for setup_only in (True, False):
        for r, p in enumerate(procs):
            p.send({"rank": r, "peers": peers, "generation": generation, "algorithm": alg, "elems": elems, "iters": iters,
                    "setup_only": setup_only})
        if setup_only:
            deadline = time.time() + 60
            bad = [x["error"] for x in (json.loads(p.line(deadline)) for p in procs) if not x.get("ok")]
            if bad:
                raise RuntimeError(bad[0])
    deadline = time.time() + limit
    answers = [json.loads(p.line(deadline)) for p in procs]
    bad = [x["error"] for x in answers if not x.get("ok")]
    if bad:
        raise RuntimeError(bad[0])
    return answers


def fit(points):
    """t = rounds * alpha + bytes * beta (no intercept), alpha, beta >= 0, least squares of the
    relative error (each point weighted by 1/t^2: the microsecond buffers count as much as the
    second-long ones)."""
    w = [(r / t, b / t) for r, b, t in points if t > 0]
    srr = sum(r * r for r, b in w)
    sbb = sum(b * b for r, b in w)
    srb = sum(r * b for r, b in w)
    srt = sum(r for r, b in w)
    sbt = sum(b for r, b in w)
    det = srr * sbb - srb * srb
    if det <= 0 or srr <= 0 or sbb <= 0:
        return None, None
    alpha = (srt * sbb - sbt * srb) / det
    beta = (sbt * srr - srt * srb) / det
    if alpha < 0:
        alpha, beta = 0.0, sbt / sbb
    if beta < 0:
        alpha, beta = srt / srr, 0.0
    return alpha, beta


def print_table(rows, counts, sizes, algs, lats):
    """Milliseconds per all-reduce: a line per (workers, bytes, algorithm), a column per latency."""
    print("%-8s %-10s %-17s" % ("workers", "bytes", "algorithm") + "".join("%12s" % ("%g ms link" % l) for l in lats))
    for n in counts:
        for size in sizes:
            for alg in algs:
                cells = []
                for lat in lats:
                    r = next((r for r in rows if (r["workers"], r["bytes"], r["latency_ms"], r["algorithm"]) == (n, size, lat, alg)), None)
                    cells.append("%12s" % ("-" if r is None else "%.2f" % (1000 * r["seconds"])))
                print("%-8d %-10d %-17s" % (n, size, alg) + "".join(cells))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--workers", default="2,4,8,16,32")
    ap.add_argument("--sizes", default="100000,300000,90000000", help="buffer sizes in bytes")
    ap.add_argument("--latencies", default="0,0.5,2", help="one-way link latencies in ms")
    ap.add_argument("--algorithms", default="ring,halving-doubling")
    ap.add_argument("--target-s", type=float, default=1.5, help="timed seconds per measurement (at least 2 all-reduces)")
    ap.add_argument("--budget", type=float, default=1500, help="seconds; measurements left after it are skipped")
    ap.add_argument("--peer-timeout", type=float, default=60)
    ap.add_argument("--json")
    ap.add_argument("--from-json", help="report on the rows of an earlier run instead of measuring")
    a = ap.parse_args()
    counts = [int(x) for x in a.workers.split(",")]
    sizes = [int(x) for x in a.sizes.split(",")]
    lats = [float(x) for x in a.latencies.split(",")]
    algs = a.algorithms.split(",")
    for n in counts:
        if not 1 <= n <= 256:
            raise SystemExit("--workers: %d is not between 1 and 256" % n)
    for s in sizes:
        if not 4 <= s <= 512 << 20:
            raise SystemExit("--sizes: %d bytes is not between 4 and 512 MiB" % s)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PEFTRAIN_TOKEN": TOKEN, "RUST_LOG": "warn"}
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    start = time.time()
    rows, skipped, failures = [], [], []
    generation = 1
    if a.from_json:
        old = json.load(open(a.from_json))
        rows, skipped, failures = old["rows"], old["skipped"], old["failures"]
        counts = sorted({r["workers"] for r in rows})
        sizes = sorted({r["bytes"] for r in rows})
        lats = sorted({r["latency_ms"] for r in rows})
        algs = sorted({r["algorithm"] for r in rows}, key=lambda x: x != "ring")
    for n in counts if not a.from_json else []:
        if time.time() - start > a.budget:
            skipped += [(n, s, l, alg) for s in sizes for l in lats for alg in algs]
            continue
        procs, addrs = start_workers(a, n, env)
        try:
            for lat in lats:
                proxy, peers = (None, addrs) if lat == 0 else start_proxy(a, addrs, lat)
                try:
                    for size in sizes:
                        for alg in algs:
                            if time.time() - start > a.budget:
                                skipped.append((n, size, lat, alg))
                                continue
                            elems = size // 4
                            generation += 1
                            first = measure(procs, peers, alg, elems, 0, generation, 600)
                            one = max(x["first_s"] for x in first)
                            iters = int(min(50, max(2, a.target_s / max(one, 1e-6))))
                            generation += 1
                            ans = measure(procs, peers, alg, elems, iters, generation, 60 + 20 * iters * one)
                            digests = {x["digest"] for x in first + ans}
                            ok = len(digests) == 1 and all(x["exact"] for x in first + ans)
                            if not ok:
                                failures.append("%d workers, %d bytes, %s: results differ between workers or from the exact sum" % (n, size, alg))
                            t = max(x["mean_s"] for x in ans)
                            wait = max(x["wait_s"] for x in ans)
                            rounds, crit = critical_path(alg, n, size)
                            rows.append({"workers": n, "bytes": size, "latency_ms": lat, "algorithm": alg, "seconds": t, "wait_seconds": wait,
                                         "iters": iters, "rounds": rounds, "critical_bytes": crit, "bytes_sent": max(x["bytes_sent"] for x in ans),
                                         "bit_identical": ok})
                            print("  %2d workers %9d B %4.1f ms %-16s %9.3f ms" % (n, size, lat, alg, 1000 * t), file=sys.stderr, flush=True)
                finally:
                    if proxy:
                        proxy.p.kill()
                        proxy.p.wait()
        finally:
            for p in procs:
                p.stop()

    print("all-reduce alone: peftrain-worker allreduce-bench over loopback; %s" % cpu_class())
    print("time per all-reduce (ms; back to back, the slowest worker's mean)")
    print_table(rows, counts, sizes, algs, lats)
    fits = {}
    for lat in lats:
        pts = [(r["rounds"], r["critical_bytes"], r["seconds"]) for r in rows if r["latency_ms"] == lat and r["workers"] > 1]
        alpha, beta = fit(pts) if len(pts) >= 2 else (None, None)
        fits[str(lat)] = {"alpha_s": alpha, "beta_s_per_byte": beta}
        if alpha is not None:
            print("fit at %g ms link: alpha %.1f us per round (the link's %g ms + %.1f us of software), beta %.3f ns/B (%.2f GB/s)"
                  % (lat, alpha * 1e6, lat, alpha * 1e6 - lat * 1e3, beta * 1e9, (1 / beta / 1e9) if beta else float("inf")))
    # What 64 and 256 workers would take with one worker per host: alpha = the link's latency
    # plus the per-message software cost of the 0 ms fit over every worker count, beta the
    # bandwidth of one uncontended pair (the 2-worker, 0 ms fit); the rounds and bytes of each
    # algorithm from the cost model. (The fits at 0.5 and 2 ms carry this 2-core machine's
    # oversubscription and the proxy's own cost: N processes and the proxy share 2 cores.)
    predictions = []
    two = [(r["rounds"], r["critical_bytes"], r["seconds"]) for r in rows if r["workers"] == 2 and r["latency_ms"] == 0]
    _, beta_pair = fit(two) if len(two) >= 2 else (None, None)
    alpha_sw = fits.get("0.0", fits.get("0", {})).get("alpha_s")
    if beta_pair is not None and alpha_sw is not None:
        for lat in lats:
            for n in (64, 256):
                for size in sizes:
                    for alg in algs:
                        rounds, crit = critical_path(alg, n, size)
                        alpha = lat * 1e-3 + alpha_sw
                        predictions.append({"workers": n, "bytes": size, "latency_ms": lat, "algorithm": alg, "alpha_s": alpha,
                                            "beta_s_per_byte": beta_pair, "seconds": rounds * alpha + crit * beta_pair})
    if predictions:
        print("predicted for one worker per host (alpha = link + %.1f us, beta %.3f ns/B), ms:" % (alpha_sw * 1e6, beta_pair * 1e9))
        print_table(predictions, (64, 256), sizes, algs, lats)
    goals = {}
    # The lower bound of the chosen algorithm: its rounds at the link's latency plus the
    # per-message software cost (the 0 ms fit's alpha), and its bytes at the bandwidth of one
    # uncontended pair (the 2-worker, 0 ms fit).
    alpha0, beta0 = alpha_sw, beta_pair
    pick = lambda n, size, lat, alg: next((r for r in rows if (r["workers"], r["bytes"], r["latency_ms"], r["algorithm"]) == (n, size, lat, alg)), None)
    ring, hd = pick(32, 300000, 0.5, "ring"), pick(32, 300000, 0.5, "halving-doubling")
    if ring and hd and beta0 is not None and alpha0 is not None:
        speedup = ring["seconds"] / hd["seconds"]
        bound = hd["rounds"] * (0.5e-3 + alpha0) + hd["critical_bytes"] * beta0
        goals = {"speedup_vs_ring": speedup, "lower_bound_s": bound, "over_bound": hd["seconds"] / bound, "alpha0_s": alpha0, "beta0_s_per_byte": beta0}
        print("32 workers, 300 KB, 0.5 ms: halving-doubling %.2f ms, ring %.2f ms: %.1fx faster (goal 4x) -> %s"
              % (1000 * hd["seconds"], 1000 * ring["seconds"], speedup, "meets" if speedup >= 4 else "MISSES"))
        print("  its alpha-beta lower bound: %d rounds x (0.5 ms + %.1f us) + %.0f B x %.3f ns/B (software and pair bandwidth at 0 ms)"
              " = %.2f ms; measured %.2fx of it (goal 2x) -> %s" % (hd["rounds"], alpha0 * 1e6, hd["critical_bytes"], beta0 * 1e9, 1000 * bound,
                                                               hd["seconds"] / bound, "meets" if hd["seconds"] <= 2 * bound else "MISSES"))
    if skipped:
        print("skipped (over --budget %.0f s): %d measurements" % (a.budget, len(skipped)))
    for f in failures:
        print("FAILED: " + f)
    print("took %.0f s" % (time.time() - start))
    report = {"cpu": cpu_class(), "rows": rows, "fits": fits, "predictions": predictions, "goals": goals, "skipped": skipped, "failures": failures,
              "wall_s": time.time() - start}
    if a.json and not a.from_json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
