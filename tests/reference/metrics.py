"""GLUE's metrics as `evaluate`'s `glue` metric computes them (scikit-learn and scipy), for
cases read as JSON: [{"kind": "classes"|"scores", "predicted": [...], "gold": [...]}, ...].
Prints one JSON object per case with every metric that applies."""
import json
import sys
import warnings

from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, mean_squared_error


def main():
    cases = json.load(open(sys.argv[1]))
    out = []
    warnings.simplefilter("ignore")
    for c in cases:
        p, g = c["predicted"], c["gold"]
        if c["kind"] == "classes":
            r = {"accuracy": float(accuracy_score(g, p)), "matthews_correlation": float(matthews_corrcoef(g, p))}
            if set(g) | set(p) <= {0, 1}:
                r["f1"] = float(f1_score(y_true=g, y_pred=p))
        else:
            pr, sr = pearsonr(p, g)[0], spearmanr(p, g)[0]
            r = {"pearson": float(pr), "spearmanr": float(sr), "mse": float(mean_squared_error(g, p))}
        out.append(r)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
