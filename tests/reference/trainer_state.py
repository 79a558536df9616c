"""Loads trainer_state.json files with transformers' own `TrainerState.load_from_json` (a key
the dataclass lacks is a TypeError) and prints each as `dataclasses.asdict` gives it.

    python trainer_state.py DIR [DIR...]   ->   JSON {DIR: the state as a dict}
"""
import dataclasses
import json
import os
import sys

from transformers import TrainerState

if __name__ == "__main__":
    out = {}
    for d in sys.argv[1:]:
        out[d] = dataclasses.asdict(TrainerState.load_from_json(os.path.join(d, "trainer_state.json")))
    print(json.dumps(out))
