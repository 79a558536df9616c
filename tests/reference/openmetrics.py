"""Parses a /metrics scrape with the Prometheus project's own OpenMetrics parser
(`prometheus_client.openmetrics.parser`, which refuses malformed families, label sets,
histograms whose buckets do not rise to +Inf = _count, and a missing `# EOF`).

    python openmetrics.py FILE   ->   JSON {family: {"type": T, "samples": [[name, labels, value], ...]}}
"""
import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

if __name__ == "__main__":
    text = open(sys.argv[1]).read()
    out = {}
    for f in text_string_to_metric_families(text):
        # NaN (a gauge before its first value) is not JSON: null.
        samples = [[s.name, s.labels, None if math.isnan(s.value) else s.value] for s in f.samples]
        out[f.name] = {"type": f.type, "samples": samples}
    print(json.dumps(out))
