"""Compare two runs of the DAG file by file: are the results bitwise the same?

For a refactoring that must not change results: run the tiny DAG at the old and the new
commit (each in its own work folder, `snakemake --directory DIR all` with config/tiny.yaml
as DIR/config.yaml, and the same --cores for both: a job's torch threads follow it, and
the thread count changes floating-point sums), then
`python tests/compare_dag_results.py OLD/results NEW/results`.
Files that record times (checkpoints, logs, training and shard records, the samplers'
speed tables) differ between any two runs; they are listed apart, not counted as changes.
Exit status 1 when another file differs or a file is missing on one side.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

# Files whose contents include wall-clock times or dates.
TIMED_NAMES = {"log.csv", "summary.json", "train.json", "info.json", "manifest.json", "samplers.csv", "ddim.csv"}
TIMED_PARTS = {"checkpoints", "pairs.zarr.done", "shards"}  # pairs.zarr.done: the shards' markers


def digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def is_timed(name: str) -> bool:
    path = Path(name)
    return path.name in TIMED_NAMES or bool(TIMED_PARTS & set(path.parts)) or name == "data/dataset.zarr/zarr.json"


def main(old: str, new: str) -> int:
    a, b = digests(Path(old)), digests(Path(new))
    missing = sorted(set(a) ^ set(b))
    differ = sorted(name for name in set(a) & set(b) if a[name] != b[name])
    changed = [name for name in differ if not is_timed(name)]
    print(f"{len(a)} files: {len(differ) - len(changed)} with times differ (expected), "
          f"{len(changed)} other files differ, {len(missing)} on one side only")
    for name in changed + missing:
        print("  ", name)
    return 1 if changed or missing else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
