"""Mean ± std over the seeds of each training time, recipe and sampler, and the figure.

    .venv/bin/python docs/runs/2026-12-08-min-snr-demo/summary.py

Reads s<seed>-<seconds>s-convergence.csv beside it; writes summary.csv and distance.png there.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from wavediffusion.plotting import plt, save_figure

HERE = Path(__file__).parent
SEEDS = (0, 1, 2)
SECONDS = (60, 300)


def rows(name: str) -> list[dict]:
    with open(HERE / name, newline="") as handle:
        return list(csv.DictReader(handle))


def setting(row: dict) -> str:
    if row["recipe"] == "control":
        return row["sampler"]
    return f"{row['sampler']}-{row['sampler_steps']} η={float(row['eta']):g}"


def main() -> None:
    summary = []
    for seconds in SECONDS:
        grouped: dict[tuple[str, str], list[dict]] = {}
        for seed in SEEDS:
            for row in rows(f"s{seed}-{seconds}s-convergence.csv"):
                grouped.setdefault((row["recipe"], setting(row)), []).append(row)
        for (recipe, name), group in grouped.items():
            out = {"seconds": seconds, "recipe": recipe, "setting": name, "seeds": len(group)}
            for column in ("nearest_train_median", "rms_scaled", "val_loss_ema", "train_steps"):
                values = [float(r[column]) for r in group if r[column]]
                out[f"{column}_mean"] = round(statistics.mean(values), 5) if values else ""
                out[f"{column}_std"] = round(statistics.stdev(values), 5) if len(values) > 1 else ""
            summary.append(out)
    with open(HERE / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)

    figure, axes = plt.subplots(1, len(SECONDS), figsize=(10, 3.8), sharey=True)
    for axis, seconds in zip(axes, SECONDS):
        files = [f"s{seed}-{seconds}s-convergence.csv" for seed in SEEDS]
        generated = {}
        for name in files:
            for row in rows(name):
                if row["recipe"] == "control":
                    continue
                generated.setdefault((row["recipe"], setting(row)), []).append(float(row["nearest_train_median"]))
        labels = sorted({label for _, label in generated})
        for offset, recipe in ((-0.15, "paper"), (0.15, "paper-minsnr")):
            for i, label in enumerate(labels):
                values = generated[(recipe, label)]
                axis.scatter([i + offset] * len(values), values, color="C0" if recipe == "paper" else "C1",
                             label=recipe if i == 0 else None)
        controls = {setting(r): float(r["nearest_train_median"]) for r in rows(files[0]) if r["recipe"] == "control"}
        for (name, value), style in zip(controls.items(), ("--", ":")):
            axis.axhline(value, color="grey", linestyle=style, label=name)
        axis.set_xticks(range(len(labels)), labels)
        axis.set_title(f"{seconds} s of training, seeds {SEEDS[0]}-{SEEDS[-1]}")
    axes[0].set_ylabel("median distance to the nearest training latent")
    axes[0].legend(fontsize=8)
    figure.suptitle("Stage 2 on the demo's latents (v-prediction): equal loss weights vs Min-SNR-5, dev box CPU")
    save_figure(figure, HERE / "distance.png")


if __name__ == "__main__":
    main()
