"""Run folders: where a training rule keeps its checkpoints between attempts.

A rule's declared output is only the final weights file; its checkpoints live in a run
folder beside it named by a hash of everything the training depends on (settings and the
data set's identity). A crashed or requeued job re-runs into the same folder and resumes;
an edited config gets a fresh folder, so it never resumes from weights trained under
other settings (the old folder is kept until you delete it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

from ..data.store import open_dataset
from ..files import atomic_file


def dataset_identity(dataset: str | Path) -> dict:
    """What identifies a dataset store's content: its representation, counts and source checksums."""
    attrs = open_dataset(dataset).attrs
    return {
        "representation": attrs["representation"],
        "counts": attrs["counts"],
        "sources": [f["sha256"] for f in attrs["provenance"]["files"]],
    }


def run_directory(parent: str | Path, identity: dict) -> Path:
    """parent/runs/<12 hex digits of the identity's hash>/, with the identity written beside it."""
    text = json.dumps(identity, sort_keys=True, default=str)
    folder = Path(parent) / "runs" / hashlib.sha256(text.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    # atomic: every rank of a multi-process run writes the same file at the same time
    with atomic_file(folder / "identity.json") as tmp:
        tmp.write_text(json.dumps(identity, sort_keys=True, indent=1, default=str) + "\n")
    return folder


def publish(run_file: str | Path, final: str | Path) -> None:
    """Copy a run's weights file to the rule's output path atomically."""
    with atomic_file(final) as tmp:
        shutil.copyfile(run_file, tmp)


def validation_trend(log_csv: str | Path, metric: str | None) -> dict | None:
    """How far the run's validation `metric` (lower is better, as for the loop's early
    stopping) was still falling at the end: the best value of the first two thirds of its
    validations against the best of the last third.
    `improvement_last_third` = (before - last) / before: ~0 on a plateau, > 0 while it falls.
    None when the run validated fewer than three times (or not at all)."""
    path = Path(log_csv)
    if metric is None or not path.exists():
        return None
    with path.open() as handle:
        column = f"val/{metric}"
        values = [float(row[column]) for row in csv.DictReader(handle) if row.get(column)]
    if len(values) < 3:
        return None
    split = len(values) - max(1, len(values) // 3)
    before, last = min(values[:split]), min(values[split:])
    return {"metric": metric, "n_validations": len(values), "best_first_two_thirds": before,
            "best_last_third": last, "improvement_last_third": (before - last) / abs(before) if before else 0.0}
