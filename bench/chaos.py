#!/usr/bin/env python3
"""A chaos harness: one run of the tiny model on a coordinator and N remote workers, undisturbed,
then the same run with faults injected at random (exponential gaps of mean --mtbf seconds):

Worker faults come only while all N workers are in the group (one replica always survives).

  kill         SIGKILL of a random worker; its "pod" comes back under the same name
  stop         SIGSTOP of a random worker, SIGCONT after --worker-timeout + 2 s
  restart      SIGTERM of a random worker (a preemption: it leaves at a step boundary, exit
               143), started again under the same name
  coordinator  SIGTERM of the coordinator (a checkpoint at the step boundary, exit 143),
               started again with --resume

When the steps left would end the run before --min-faults faults at the pace so far (a slow
machine), the next fault comes at once (a coordinator fault if a worker fault must wait): the
count is then met on any machine, and the output says how many faults were hurried.

It prints, per kind, how long the coordinator took to see the fault (its log line: "lost" for
kill and stop, "left" for restart, the exit for coordinator), how long training stalled
(the longest wait for a step until the next fault), the time lost (the stall less one undisturbed step), and the
throughput the disturbed run kept against the undisturbed one. Every wait has a bound; at the
end no process of the run may be left (looked for by a tag in every command line).

torchft, the reference for fault-tolerant data parallelism, drops the batch of a step whose
all-reduce failed (should_commit() is false: the step is not applied anywhere). peftrain redoes
that batch on the survivors, so the disturbed run must end with the undisturbed run's weights;
tests/tests/chaos.rs checks that (1e-5), and that metrics.jsonl holds every step once.

    chaos.py --bin PEFTRAIN --model DIR --tokenizer DIR --glue DIR --work DIR [--workers 3]
             [--max-steps 3000] [--mtbf 1.0] [--min-faults 20] [--seed 1] [--json OUT]
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

TOKEN = "chaos-harness-token-" + "%08x" % random.SystemRandom().getrandbits(32)
KINDS = ("kill", "stop", "restart", "coordinator")
# Steps kept in reserve per fault still owed to --min-faults (a fault needs a step after the
# previous one, and a worker fault a whole group).
HURRY_STEPS_PER_FAULT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process whose stderr lines are kept with the time they arrived."""

    def __init__(self, name, cmd, env, log_path):
        self.name = name
        self.lines = []
        self.log = open(log_path, "a")
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append((time.time(), line.rstrip("\n")))
            self.log.write(line)
            self.log.flush()

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        try:
            os.kill(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, limit):
        """The exit status within `limit` seconds, else SIGKILL and None."""
        try:
            return self.p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.p.wait()
            return None


class Group:
    def __init__(self, a, out, tag):
        self.a = a
        self.out = out
        self.tag = tag
        self.port = free_port()
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PEFTRAIN_TOKEN": TOKEN, "RUST_LOG": "info",
                    "HOME": os.environ.get("HOME", "/tmp")}
        if "LD_LIBRARY_PATH" in os.environ:
            self.env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
        self.logs = os.path.join(a.work, tag + "-logs")
        os.makedirs(self.logs, exist_ok=True)
        self.coordinator = None
        self.coordinators = []
        self.workers = {}
        self.all = []
        self.seen = {}  # step -> first time it was seen in metrics.jsonl
        self.group = 0  # workers in the group at the newest step
        self.offset = 0  # bytes of metrics.jsonl read so far

    def coord_cmd(self):
        a = self.a
        return [a.bin, "coordinator", "--listen", "127.0.0.1:%d" % self.port, "--workers", str(a.workers), "--min-workers", "1",
                "--register-timeout", "30", "--worker-timeout", str(a.worker_timeout), "--signal-exit-code", "143", "--resume",
                "--model", a.model, "--tokenizer", a.tokenizer, "--glue-dir", a.glue, "--task", "sst2", "--method", "lora",
                "--lora-dropout", "0", "--train-limit", str(a.train_limit), "--eval-strategy", "no", "--batch-size", "16",
                "--max-steps", str(a.max_steps), "--lr", "1e-3", "--logging-steps", "1", "--save-steps", "200",
                "--save-total-limit", "2", "--base-dtype", "fp32", "--seed", "42", "--all-reduce", a.all_reduce, "--output-dir", self.out]

    def start_coordinator(self):
        self.coordinator = Proc("coordinator", self.coord_cmd(), self.env, os.path.join(self.logs, "coordinator.log"))
        self.coordinators.append(self.coordinator)
        self.all.append(self.coordinator)

    def start_worker(self, i):
        a = self.a
        wid = "%s-w%d" % (self.tag, i)
        cmd = [a.bin, "worker", "--coordinator", "http://127.0.0.1:%d" % self.port, "--id", wid, "--threads", "1",
               "--worker-timeout", str(a.worker_timeout), "--coordinator-timeout", "60", "--signal-exit-code", "143"]
        w = Proc(wid, cmd, self.env, os.path.join(self.logs, wid + ".log"))
        self.workers[i] = w
        self.all.append(w)
        return w

    def poll_metrics(self):
        """Reads what metrics.jsonl gained since the last look (a resume may truncate it to the
        checkpoint's step: then from the start again; steps seen keep their first time)."""
        path = os.path.join(self.out, "metrics.jsonl")
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                chunk = f.read()
                # Only whole lines: a line still being written is read next time.
                end = chunk.rfind(b"\n") + 1
                self.offset += end
                for line in chunk[:end].decode("utf-8", "replace").splitlines():
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if "loss" in e and isinstance(e.get("step"), int):
                        self.seen.setdefault(e["step"], time.time())
                        if e["step"] >= self.last_step():
                            self.group = e.get("workers", 0)
        except FileNotFoundError:
            pass

    def last_step(self):
        return max(self.seen) if self.seen else 0


def logged_after(proc_list, t, until, pattern):
    for p in proc_list:
        for when, line in list(p.lines):
            if t <= when < until and re.search(pattern, line):
                return when
    return None


def run(a, out, tag, chaos):
    g = Group(a, out, tag)
    rng = random.Random(a.seed)
    faults = []
    stopped = {}  # worker index -> SIGCONT time
    start = time.time()
    deadline = start + a.timeout
    g.start_coordinator()
    for i in range(a.workers):
        g.start_worker(i)
    next_fault = start + 3 + rng.expovariate(1 / a.mtbf)
    order = []
    finished = False
    while time.time() < deadline:
        g.poll_metrics()
        now = time.time()
        for i, t in list(stopped.items()):
            if now >= t:
                g.workers[i].signal(signal.SIGCONT)
                del stopped[i]
        c = g.coordinator
        if not c.alive():
            code = c.p.returncode
            if code == 0:
                finished = True
                break
            if code != 143:
                raise SystemExit("coordinator exited %s unasked:\n%s" % (code, "\n".join(l for _, l in c.lines[-30:])))
            g.start_coordinator()
            continue
        # A fault once the previous one's step has passed, so each is measured on its own; a
        # worker's only while the group is whole, so that one replica always holds the state
        # (as torchft's tests keep one replica group alive: losing every replica at once is a
        # restart from the last checkpoint, another story).
        # Hurried: the steps left would end the run before --min-faults at this pace (a slow
        # machine, long rejoins), so the next fault is due now and, while a worker fault must
        # wait for the group to be whole, a coordinator fault goes first.
        needed = a.min_faults - len(faults)
        hurry = needed > 0 and (a.max_steps - 20) - g.last_step() < needed * HURRY_STEPS_PER_FAULT
        if chaos and (now >= next_fault or hurry) and g.last_step() > (faults[-1]["step_after"] if faults else 0) and g.last_step() < a.max_steps - 20:
            # The kinds in a random order, each once per round: every kind is exercised.
            if not order:
                order = rng.sample(a.kinds, len(a.kinds))
            kind = order[0]
            if kind != "coordinator" and (g.group < a.workers or stopped):
                if not (hurry and "coordinator" in a.kinds):
                    time.sleep(0.01)
                    continue
                kind = "coordinator"
                if kind in order:
                    order.remove(kind)
            else:
                order.pop(0)
            live = [i for i, w in g.workers.items() if w.alive() and i not in stopped]
            f = {"kind": kind, "at": now, "step": g.last_step(), "hurried": hurry and now < next_fault}
            if kind == "kill" and live:
                i = rng.choice(live)
                f["target"] = g.workers[i].name
                g.workers[i].signal(signal.SIGKILL)
                g.workers[i].wait(10)
                time.sleep(0.3)
                g.start_worker(i)
            elif kind == "stop" and live:
                i = rng.choice(live)
                f["target"] = g.workers[i].name
                g.workers[i].signal(signal.SIGSTOP)
                stopped[i] = now + a.worker_timeout + 2
            elif kind == "restart" and live:
                i = rng.choice(live)
                f["target"] = g.workers[i].name
                g.workers[i].signal(signal.SIGTERM)
                f["exit"] = g.workers[i].wait(30)
                f["left_s"] = time.time() - now
                g.start_worker(i)
            elif kind == "coordinator":
                f["target"] = "coordinator"
                g.coordinator.signal(signal.SIGTERM)
                f["exit"] = g.coordinator.wait(30)
                f["exit_s"] = time.time() - now
                if f["exit"] == 0:
                    finished = True
                    break
                g.start_coordinator()
            else:
                continue
            # What was logged up to now (the stopped coordinator's last step included) came
            # before the fault was handled: the next fault waits for a step after it.
            g.poll_metrics()
            f["step_after"] = g.last_step()
            faults.append(f)
            next_fault = time.time() + rng.expovariate(1 / a.mtbf)
        time.sleep(0.02)
    wall = time.time() - start
    for i in stopped:
        g.workers[i].signal(signal.SIGCONT)
    # The end: every worker told to exit by the coordinator, within a bound.
    exits = {w.name: w.wait(30) for w in g.workers.values()}
    for p in g.all:
        if p.alive():
            p.wait(5)
    g.poll_metrics()
    orphans = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout.split()
    for k, f in enumerate(faults):
        t = f["at"]
        # Seen by the coordinator that was running, before the next fault; a coordinator stop
        # that came first leaves the fault unseen (its successor never knew the worker).
        until = faults[k + 1]["at"] if k + 1 < len(faults) else float("inf")
        if f["kind"] in ("kill", "stop"):
            seen = logged_after(g.coordinators, t, until, r"lost .*%s" % re.escape(f["target"]))
        elif f["kind"] == "restart":
            seen = logged_after(g.coordinators, t, until, r"%s left" % re.escape(f["target"]))
        else:
            seen = t + f["exit_s"] if f.get("exit_s") is not None else None
        f["detected_s"] = None if seen is None else seen - t
        # The stall: the longest wait for a step between this fault and the next (the step in
        # flight may still complete at once; the one that needs the lost worker, or the
        # restarted coordinator, is what waits).
        pts = sorted((s, when) for s, when in g.seen.items() if s >= f["step"])
        gaps = [b[1] - max(a[1], t) for a, b in zip(pts, pts[1:]) if t < b[1] < until]
        f["stall_s"] = max(gaps) if gaps else None
    return {"finished": finished, "wall_s": wall, "steps": g.last_step(), "faults": faults, "worker_exits": exits, "orphans": orphans,
            "coordinator_starts": len(g.coordinators), "timed_out": not finished and time.time() >= deadline}


def summarize(base, chaos, a):
    step = base["wall_s"] / max(1, base["steps"])
    rows = []
    for kind in KINDS:
        fs = [f for f in chaos["faults"] if f["kind"] == kind]
        if not fs:
            continue
        det = [f["detected_s"] for f in fs if f["detected_s"] is not None]
        stall = [f["stall_s"] for f in fs if f["stall_s"] is not None]
        rows.append({"kind": kind, "count": len(fs), "detected_mean_s": statistics.mean(det) if det else None,
                     "detected_max_s": max(det) if det else None, "undetected": len(fs) - len(det),
                     "stall_mean_s": statistics.mean(stall) if stall else None,
                     "lost_mean_s": statistics.mean(stall) - step if stall else None})
    retained = (chaos["steps"] / chaos["wall_s"]) / (base["steps"] / base["wall_s"])
    return {"undisturbed_step_s": step, "by_kind": rows, "throughput_retained": retained}


def cpu_class():
    try:
        flags = open("/proc/cpuinfo").read()
        model = re.search(r"model name\s*:\s*(.*)", flags).group(1)
    except (OSError, AttributeError):
        return "unknown CPU"
    feats = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if re.search(r"\b%s\b" % f, flags)]
    return "%s (%s, %d cores)" % (model.strip(), " ".join(feats) or "no AVX2", os.cpu_count() or 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--glue", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--train-limit", type=int, default=640)
    ap.add_argument("--mtbf", type=float, default=1.0)
    ap.add_argument("--min-faults", type=int, default=20)
    ap.add_argument("--worker-timeout", type=float, default=2.0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--all-reduce", default="auto", help="the coordinator's --all-reduce")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json")
    a = ap.parse_args()
    a.kinds = [k for k in a.kinds.split(",") if k]
    for k in a.kinds:
        if k not in KINDS:
            raise SystemExit("--kinds: %s is not one of %s" % (k, ", ".join(KINDS)))
    os.makedirs(a.work, exist_ok=True)
    nonce = "%06x" % random.SystemRandom().getrandbits(24)
    # The tag names the output directory and every worker, so it is in every command line of
    # the run: what pgrep finds of it afterwards is an orphan.
    tags = {"undisturbed": "chaos%s-undisturbed" % nonce, "disturbed": "chaos%s-disturbed" % nonce}
    dirs = {k: os.path.join(a.work, t) for k, t in tags.items()}
    base = run(a, dirs["undisturbed"], tags["undisturbed"], chaos=False)
    chaos = run(a, dirs["disturbed"], tags["disturbed"], chaos=True)
    s = summarize(base, chaos, a)
    report = {"cpu": cpu_class(), "all_reduce": a.all_reduce, "workers": a.workers, "max_steps": a.max_steps, "mtbf_s": a.mtbf, "worker_timeout_s": a.worker_timeout,
              "undisturbed": base, "disturbed": chaos, "summary": s,
              "dirs": dirs}
    print("chaos: %d workers, tiny RoBERTa LoRA, %d steps, faults every %.1f s on average, --worker-timeout %.0f s, --all-reduce %s; %s"
          % (a.workers, a.max_steps, a.mtbf, a.worker_timeout, a.all_reduce, report["cpu"]))
    print("undisturbed: %.1f s (%.1f ms/step); disturbed: %.1f s, %d faults survived, %d coordinator starts"
          % (base["wall_s"], 1000 * s["undisturbed_step_s"], chaos["wall_s"], len(chaos["faults"]), chaos["coordinator_starts"]))
    print("%-12s %5s %14s %14s %12s %12s" % ("fault", "count", "seen (mean)", "seen (max)", "stall", "time lost"))
    fmt = lambda v: "-" if v is None else "%.2f s" % v
    for r in s["by_kind"]:
        print("%-12s %5d %14s %14s %12s %12s" % (r["kind"], r["count"], fmt(r["detected_mean_s"]), fmt(r["detected_max_s"]),
                                                 fmt(r["stall_mean_s"]), fmt(r["lost_mean_s"])))
    hurried = sum(1 for f in chaos["faults"] if f.get("hurried"))
    gaps = [b["at"] - a_["at"] for a_, b in zip(chaos["faults"], chaos["faults"][1:])]
    print("mean time between faults: %s (%d of them hurried to reach --min-faults)"
          % ("%.2f s" % statistics.mean(gaps) if gaps else "-", hurried))
    print("throughput retained: %.1f%% of the undisturbed run's steps/s" % (100 * s["throughput_retained"]))
    print("orphan processes: %d" % (len(base["orphans"]) + len(chaos["orphans"])))
    # The longest stalls, each with the fault before it and what was stopped then: where a
    # machine's figures differ from these, this says which fault and when.
    worst = sorted((f for f in chaos["faults"] if f.get("stall_s") is not None), key=lambda f: -f["stall_s"])[:3]
    print("longest stalls: %s" % ", ".join("%.2f s after %s at step %d (+%.1f s)" % (f["stall_s"], f["kind"], f["step"], f["at"] - chaos["faults"][0]["at"])
                                           for f in worst))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    ok = base["finished"] and chaos["finished"] and len(chaos["faults"]) >= a.min_faults and not base["orphans"] and not chaos["orphans"]
    if not ok:
        print("FAILED: finished %s/%s, %d faults (want %d), orphans %s %s" % (base["finished"], chaos["finished"], len(chaos["faults"]),
                                                                               a.min_faults, base["orphans"], chaos["orphans"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
