"""What the stores' integrity checks (src/wavediffusion/data/integrity.py) cost beside the
reads they guard: opening (a listing of the shard files), reading with and without a crc32c
checksum per chunk (whole shards, and single samples as a shuffled DataLoader reads them),
and a whole `verify`. Random seismic of the science scale's shape (3 x 1024 x 64), one
sample per chunk, as the dataset store holds it.

    .venv/bin/python benchmarks/store_integrity.py --samples 1024 --folder /tmp/integrity
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from wavediffusion.data import integrity

SHAPE = (3, 1024, 64)


def make_store(path: Path, n: int, per_shard: int, compressors) -> zarr.Array:
    shutil.rmtree(path, ignore_errors=True)
    root = zarr.open_group(str(path), mode="w")
    root.attrs[integrity.ATTRIBUTE] = integrity.VERSION
    array = root.create_array("seismic", shape=(n, *SHAPE), chunks=(1, *SHAPE), shards=(per_shard, *SHAPE),
                              dtype="float32", fill_value=float("nan"), compressors=compressors)
    rng = np.random.default_rng(0)
    for start in range(0, n, per_shard):
        # smooth-ish values in [-1, 1], so that zstd has something to do, as with real seismic
        block = np.tanh(rng.standard_normal((min(per_shard, n - start), *SHAPE)).cumsum(axis=2) / 30)
        array[start : start + len(block)] = block.astype(np.float32)
    return array


def seconds(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--random-reads", type=int, default=256)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/store_integrity"))
    args = parser.parse_args()
    n, per_shard = args.samples, args.samples_per_shard
    rows = np.random.default_rng(1).choice(n, args.random_reads, replace=False)
    mb = n * np.prod(SHAPE) * 4 / 1e6
    print(f"{n} samples of {SHAPE} float32 ({mb:.0f} MB), {per_shard} per shard file")
    print("| store | whole read, MB/s | random samples/s | open check, ms | verify, s |")
    print("|---|---|---|---|---|")
    for name, compressors in (("zstd", (ZstdCodec(),)), ("zstd + crc32c", integrity.COMPRESSORS)):
        path = args.folder / f"{name.replace(' + ', '_')}.zarr"
        array = make_store(path, n, per_shard, compressors)
        root = zarr.open_group(str(path), mode="r")
        whole = seconds(lambda: [array[s : s + per_shard] for s in range(0, n, per_shard)])
        random = seconds(lambda: [array[int(r)] for r in rows])
        written = integrity.all_rows(root)
        opening = seconds(lambda: integrity.find_damage(path, root, written), repeats=5)
        verify = seconds(lambda: integrity.find_damage(path, root, written, decode=True), repeats=1)
        print(f"| {name} | {mb / whole:.0f} | {len(rows) / random:.0f} | {opening * 1e3:.2f} | {verify:.2f} |")


if __name__ == "__main__":
    main()
