"""The step of rules/claims.smk: each claim of the paper tested on the run's own tables."""

from __future__ import annotations

from typing import Annotated

from . import step


@step()
def run_claims(variants: Annotated[list[str], "the Stage-1 variants, in the order of the per-variant files"],
               table5: Annotated[list[str], "diffusion-trajectory's table5.csv per variant, in order"],
               deviation: Annotated[list[str], "diffusion-trajectory's deviation.csv per variant"],
               memorisation: Annotated[list[str], "memorisation.csv per variant"],
               fid: Annotated[str, "fid_table.csv"],
               stage1_metrics: Annotated[str, "results/stage1/metrics.csv"],
               stage1_records: Annotated[list[str], "train-stage1's train.json per variant"],
               stage2_records: Annotated[list[str], "train-stage2's train.json per variant"],
               table2: Annotated[str, "results/inversionnet/table2.csv"],
               inversion_records: Annotated[list[str], "the arm `real`'s train.json of every seed"],
               table3: Annotated[str, "results/inversionnet/table3.csv"],
               table4: Annotated[str, "results/inversionnet/table4.csv"],
               out: Annotated[str, "claims.csv to write"],
               table8: Annotated[str | None, "results/ablation/table8.csv (when ablation.table8 is on)"] = None
               ) -> None:
    """the paper's claims tested on the run's result tables (results/claims.csv)"""
    import json
    from pathlib import Path

    from ..evaluation.claims import COLUMNS, claims_table
    from ..files import read_csv, write_csv

    def record(path: str) -> dict:
        return json.loads(Path(path).read_text())

    rows = claims_table(variants, [read_csv(path) for path in table5], [read_csv(path) for path in deviation],
                        [read_csv(path) for path in memorisation], [record(path) for path in stage1_records],
                        [record(path) for path in stage2_records], read_csv(fid), read_csv(stage1_metrics),
                        read_csv(table2), [record(path) for path in inversion_records], read_csv(table3),
                        read_csv(table4), read_csv(table8) if table8 else [])
    write_csv(rows, out, COLUMNS)
    for row in rows:
        print(f"{row['claim']:>24} {row['variant']}: {row['held']:<26} {row['measured']}")
