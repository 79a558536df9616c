"""torch.randperm on the CPU from a generator seeded with each given seed, as accelerate's
SeedableRandomSampler draws the Trainer's epoch order. Prints {"<seed>": [order], ...}.

    python randperm.py --n 67349 --seeds 42,43,4294967338
"""
import argparse
import json

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seeds", required=True)
    a = ap.parse_args()
    out = {}
    for s in a.seeds.split(","):
        g = torch.Generator()
        g.manual_seed(int(s))
        out[s] = torch.randperm(a.n, generator=g).tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
