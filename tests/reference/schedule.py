"""The learning rate of every step under transformers' `get_scheduler`, the reference for
peftrain's schedules: for each case (type, peak lr, warmup steps, total steps), the rate a
torch optimizer holds at steps 0..total+2 as the Trainer steps its LambdaLR.

    python schedule.py '[["cosine", 5e-4, 3, 20], ...]'   ->   JSON list of lists of rates
"""
import json
import sys

import torch
from transformers import get_scheduler


def rates(kind, peak, warmup, total):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for _ in range(total + 3):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


if __name__ == "__main__":
    print(json.dumps([rates(k, p, w, t) for k, p, w, t in json.loads(sys.argv[1])]))
