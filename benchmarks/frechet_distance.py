"""The Fréchet distance at Inception's 2048 dimensions: evaluation.fid.frechet_distance
(two symmetric eigendecompositions) against pytorch-fid's calculate_frechet_distance
(scipy.linalg.sqrtm of the covariance product): seconds and the relative difference.

    python benchmarks/frechet_distance.py [--dims 2048] [--samples 3000 6]

Features are random but shaped like Inception's (a low-rank part plus noise); with fewer
samples than dimensions the covariances are singular, as in the tests' tiny DAG.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from wavediffusion.evaluation.fid import feature_statistics, frechet_distance


def features(rng: np.random.Generator, n: int, dims: int, shift: float) -> np.ndarray:
    low_rank = rng.standard_normal((n, 64)) @ rng.standard_normal((64, dims)) * 0.1
    return low_rank + rng.standard_normal((n, dims)) * 0.5 + shift


def timed(function, *args) -> tuple[float, float]:
    started = time.perf_counter()
    value = function(*args)
    return float(value), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--samples", type=int, nargs="+", default=[3000, 6])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| samples | dims | ours (s) | pytorch-fid (s) | FID | relative difference |\n|---|---|---|---|---|---|")
    for n in args.samples:
        stats = (*feature_statistics(features(rng, n, args.dims, 0.0)),
                 *feature_statistics(features(rng, n, args.dims, 0.05)))
        ours, ours_seconds = timed(frechet_distance, *stats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sqrtm(disp=False) is deprecated in SciPy 1.16
            reference, reference_seconds = timed(calculate_frechet_distance, *stats)
        print(f"| {n} | {args.dims} | {ours_seconds:.1f} | {reference_seconds:.1f} | {ours:.4f} | "
              f"{abs(ours - reference) / abs(reference):.1e} |", flush=True)


if __name__ == "__main__":
    main()
