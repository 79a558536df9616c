"""torch's CPU dropout mask stream: `torch.empty(n).bernoulli_(keep)` after `manual_seed(seed)`
and `skip` outputs of the generator, beside the same draw rendered here in Python from ATen's
serial kernel (mt19937; each element a 53-bit uniform from random64(), the first output the
high half; kept when below `keep`). torch runs that kernel unless it hands the draw to MKL
(Intel CPUs); `torch_is_serial` says which. Prints {"torch": [...], "serial": [...],
"torch_is_serial": bool}.

    python bernoulli.py --seed 5 --skip 1 --n 1000 --keep 0.9
"""
import argparse
import json

import torch


def mt19937(seed):
    """The 32-bit outputs of std::mt19937 seeded with seed's low 32 bits, as ATen seeds it."""
    s = [0] * 624
    s[0] = seed & 0xFFFFFFFF
    for j in range(1, 624):
        s[j] = (1812433253 * (s[j - 1] ^ (s[j - 1] >> 30)) + j) & 0xFFFFFFFF
    i = 624
    while True:
        if i >= 624:
            for k in range(624):
                y = (s[k] & 0x80000000) | (s[(k + 1) % 624] & 0x7FFFFFFF)
                s[k] = s[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            i = 0
        y = s[i]
        i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        yield y


def serial(seed, skip, n, keep):
    g = mt19937(seed)
    for _ in range(skip):
        next(g)
    out = []
    for _ in range(n):
        hi, lo = next(g), next(g)
        u = ((hi << 32) | lo) & ((1 << 53) - 1)
        out.append(1.0 if u * 2.0**-53 < keep else 0.0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--skip", type=int, default=0, help="generator outputs drawn first (int32 random_: one each)")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--keep", type=float, default=0.9)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    if a.skip:
        torch.empty(a.skip, dtype=torch.int32).random_()
    got = torch.empty(a.n).bernoulli_(a.keep).tolist()
    ref = serial(a.seed, a.skip, a.n, a.keep)
    print(json.dumps({"torch": got, "serial": ref, "torch_is_serial": got == ref}))


if __name__ == "__main__":
    main()
