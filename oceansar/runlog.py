"""A run's log.jsonl: one JSON record per log step, per epoch and per event (resumed, eval, done).

Written by pretrain.py on rank 0 only (append, one line per record: a killed run leaves every earlier record
whole); read by curves.py (curves.png), study_report.py and anyone with `json.loads` per line.
"""

import json


class RunLog:
    """Appends JSON records to `path` (rank 0 only: other ranks get a no-op)."""

    def __init__(self, path, enabled, fresh):
        self.path, self.enabled = path, enabled
        if enabled and fresh:
            open(path, "w").close()

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read(path):
    """The JSON records of a log.jsonl; a last line still being written by a live run is skipped."""
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for i, line in enumerate(lines):
        if i == len(lines) - 1 and not line.rstrip().endswith("}"):
            break
        records.append(json.loads(line))
    return records


def curation_share(records):
    """Curation (embedding + k-means + sampling) vs training wall time over a whole run, resumes included:
    every epoch record (an interrupted epoch and its resumed rest are both time spent; epoch_s includes the
    epoch's curation_s, not its kNN evaluation)."""
    epochs = [r for r in records if r.get("event") == "epoch"]
    cur = sum(r["curation_s"] for r in epochs if "curation" in r)  # a uniform subset draw is not a curation
    train = sum(r["epoch_s"] for r in epochs) - cur
    return {"curation_s": cur, "train_s": train, "curation_share": cur / train if train > 0 else 0.0}
