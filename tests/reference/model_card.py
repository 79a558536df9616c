"""Reads a model card (README.md) with huggingface_hub's own ModelCard, as the hub parses it:
prints its metadata and the evaluation results its model-index declares.

    python model_card.py README.md   ->   JSON {"data": {...}, "eval_results": [{...}, ...]}
"""
import json
import sys

from huggingface_hub import ModelCard

if __name__ == "__main__":
    card = ModelCard.load(sys.argv[1])
    results = [
        {"metric_type": r.metric_type, "metric_value": r.metric_value, "dataset_type": r.dataset_type,
         "dataset_config": r.dataset_config, "dataset_split": r.dataset_split, "task_type": r.task_type}
        for r in (card.data.eval_results or [])
    ]
    print(json.dumps({"data": card.data.to_dict(), "eval_results": results}))
