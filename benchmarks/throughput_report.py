"""The markdown table and the loss-curve figure of a throughput run (benchmarks/throughput.py).

    python benchmarks/throughput_report.py docs/runs/2026-12-06-throughput --base 3a52129

Reads RUN/throughput.csv and RUN/curves.csv; prints one table row per measured setting with
its speed-up over the base commit's row of the same part and network (else the part's
first), and writes
RUN/loss_curves.png: each training part's loss per logged window, every run of the part
(eager and compiled, base and new) on one panel.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def table(rows: list[dict], base: str) -> str:
    # a row is compared with the base's row of the same part and the same network (the
    # setting's first field, e.g. "G only"), else with the base's first row of the part
    baseline = {}
    for row in rows:
        if row["commit"] == base:
            baseline.setdefault(row["part"], float(row["samples_per_s"]))
            baseline.setdefault((row["part"], row["setting"].split(",")[0]), float(row["samples_per_s"]))
    lines = ["| part | setting | commit | samples/s | × base | TFLOP/s | MFU | warm-up s | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rate = float(row["samples_per_s"])
        reference = baseline.get((row["part"], row["setting"].split(",")[0]), baseline.get(row["part"]))
        ratio = f"{rate / reference:.2f}" if reference else ""
        lines.append(f"| {row['part']} | {row['setting']} | {row['commit']} | {rate:,.1f} | {ratio} | {row['tflops']} "
                     f"| {row['mfu']} | {row['warmup_s']} | {row['peak_gib']} |")
    return "\n".join(lines)


def figure(curves: list[dict], out: Path) -> None:
    runs = defaultdict(list)
    for row in curves:
        runs[(row["part"], row["setting"], row["commit"])].append((int(row["step"]), float(row["loss"])))
    parts = sorted({part for part, _, _ in runs})
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        for (p, setting, commit), points in runs.items():
            if p == part:
                steps, losses = zip(*points)
                ax.plot(steps, losses, marker=".", label=f"{commit}: {setting}")
        ax.set_title(part)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss (window mean)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--base", required=True, help="the base commit's label in the CSV")
    args = parser.parse_args()
    print(table(read(args.run / "throughput.csv"), args.base))
    if (args.run / "curves.csv").exists():
        figure(read(args.run / "curves.csv"), args.run / "loss_curves.png")


if __name__ == "__main__":
    main()
