"""Reads every scalar of a TensorBoard log directory with the `tensorboard` package's own
EventAccumulator (record checksums checked), the reference reader for peftrain's event files.

    python tensorboard_scalars.py LOGDIR   ->   JSON {"files": N, "scalars": {tag: [[step, value], ...]}}
"""
import json
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

if __name__ == "__main__":
    logdir = sys.argv[1]
    files = [f for f in os.listdir(logdir) if f.startswith("events.out.tfevents.")]
    # size_guidance 0: keep every scalar (the default samples 10,000 per tag).
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    print(json.dumps({"files": len(files), "scalars": scalars}))
