"""The step of rules/physics.smk: the data set's own PDE deviation, the floor every
generated pair is judged against."""

from __future__ import annotations

from typing import Annotated

from . import Dataset, Threads, step, use_threads


@step()
def run_pde_floor(dataset: Dataset,
                  samples_per_family: Annotated[int, "test pairs per family whose deviation is measured"],
                  backends: Annotated[list[str], "forward-modelling backends to compare: deepwave, openfwi"],
                  batch_size: Annotated[int, "pairs forward-modelled at once"],
                  out: Annotated[str, "pde_floor.csv to write: the deviation per family and backend"],
                  true_pairs: Annotated[str, "CSV to write: each true pair's deviation (deepwave, model64)"],
                  threads: Threads = None) -> None:
    """PDE deviation of the data set's own true pairs"""
    from ..files import write_csv
    from ..physics.deviation import FLOOR_COLUMNS, TRUE_PAIR_COLUMNS, pde_floor

    use_threads(threads)
    rows, true_pair_rows = pde_floor(dataset, samples_per_family, backends, batch_size)
    write_csv(rows, out, FLOOR_COLUMNS)
    write_csv(true_pair_rows, true_pairs, TRUE_PAIR_COLUMNS)
    for row in rows:
        print(f"{row['family']:>13} {row['backend']:>8} {row['velocity_input']:>8}: {row['deviation_mean']:.3e}")
