"""PyTorch DDP (gloo, torchrun) + peft LoRA training on SST-2, the reference stack peftrain's
distributed benchmark compares against. Each rank trains on its slice of every global batch;
DDP all-reduces only parameters with requires_grad, in buckets. A comm hook times each
all-reduce (from launch to completion) on every rank, so the all-reduce share of step time can
be reported as peftrain reports it: per step, the slowest rank's all-reduce (which includes
waiting for the slowest shard's backward) and the fastest rank's (the rank that came last and
waited for nobody: the exchange itself).

Run with: torchrun --nproc_per_node N bench/ddp_lora.py --model DIR --tsv train.tsv --steps S --out result.json
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16, help="global batch")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(42)
    from peft import LoraConfig, TaskType, get_peft_model

    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))
    ddp = DDP(model)
    reduce_s = []
    current = [0]

    def timed_allreduce(state, bucket):
        t0 = time.perf_counter()
        step = current[0]
        fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()

        def done(f):
            reduce_s.append((step, time.perf_counter() - t0))
            return f.value()[0]

        return fut.then(done)

    ddp.register_comm_hook(None, timed_allreduce)
    tok = AutoTokenizer.from_pretrained(a.model)
    with open(a.tsv, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header = lines[0].split("\t")
    rows = [l.split("\t") for l in lines[1:] if l.strip()][: a.batch_size * (a.steps + 3)]
    texts = [r[header.index("sentence")] for r in rows]
    labels = [int(r[header.index("label")]) for r in rows]
    opt = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=a.lr)
    per = a.batch_size // world
    ddp.train()
    step_s = []
    for step in range(a.steps + 3):
        if step == 3:  # warm-up steps excluded
            reduce_s.clear()
            t_start = time.perf_counter()
        t0 = time.perf_counter()
        current[0] = step
        lo = step * a.batch_size + rank * per
        enc = tok(texts[lo:lo + per], truncation=True, max_length=a.max_length, padding=True, return_tensors="pt")
        out = ddp(**enc, labels=torch.tensor(labels[lo:lo + per]))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        opt.step()
        if step >= 3:
            step_s.append(time.perf_counter() - t0)
    dist.barrier()
    wall = time.perf_counter() - t_start
    per_step = {}
    for step, dt in reduce_s:
        per_step[step] = per_step.get(step, 0.0) + dt
    every = [None] * world
    dist.all_gather_object(every, per_step)
    steps = sorted(set().union(*[set(d) for d in every]))
    slowest = sum(max(d.get(s, 0.0) for d in every) for s in steps)
    fastest = sum(min(d.get(s, 0.0) for d in every) for s in steps)
    if rank == 0:
        with open(a.out, "w") as f:
            json.dump({"samples_per_second": a.batch_size * a.steps / wall, "allreduce_share": slowest / sum(step_s),
                       "exchange_share": fastest / sum(step_s), "world": world, "steps": a.steps}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
