"""What the stores' compressor costs and saves on their seismic, per sample: the compressed
size and the seconds to encode and decode one sample with Zstd level 0 (the stores' codec,
integrity.COMPRESSORS) and with Blosc's byte-shuffled LZ4 and Zstd, on one thread; then the
milliseconds per sample of writing and reading a Zarr store of them (one sample per chunk,
one shard, the crc32c checksum after the compressor, as the stores hold them) with each, and
with no compressor. The samples come from real stores (a dataset store's train split, a
pairs store's decoded and simulated seismic), since the ratio depends on the values.

    .venv/bin/python benchmarks/store_codecs.py --dataset results/data/dataset.zarr \
        --pairs results/samples/1vq/pairs.zarr --out store_codecs.csv
"""

from __future__ import annotations

import argparse
import csv
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

# name -> (the codec on its own, as numcodecs runs it; the same as a Zarr v3 store holds it,
# before the checksum); "none": the store with the checksum only
CODECS = {
    "zstd level 0 (the stores')": (numcodecs.Zstd(level=0), ZstdCodec(level=0)),
    "blosc lz4, byte shuffle": (Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
                                BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)),
    "blosc zstd level 1, byte shuffle": (Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE),
                                         BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=4)),
    "none": (None, None),
}


def store_ms(samples: np.ndarray, codec, folder: Path, repeats: int) -> tuple[float, float]:
    """Milliseconds per sample to write, then read, the samples as one Zarr shard."""
    path = folder / "store.zarr"
    shutil.rmtree(path, ignore_errors=True)
    compressors = (Crc32cCodec(),) if codec is None else (codec, Crc32cCodec())
    array = zarr.create_array(str(path), shape=samples.shape, chunks=(1, *samples.shape[1:]), shards=samples.shape,
                              dtype=samples.dtype, compressors=compressors, fill_value=float("nan"))
    writes, reads = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        array[:] = samples
        writes.append(time.perf_counter() - started)
        started = time.perf_counter()
        array[:]
        reads.append(time.perf_counter() - started)
    return 1e3 * min(writes) / len(samples), 1e3 * min(reads) / len(samples)


def seconds_per_call(function, items: list, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            function(item)
    return (time.perf_counter() - started) / (repeats * len(items))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="a dataset store (its train seismic)")
    parser.add_argument("--pairs", type=Path, help="a pairs store (its seismic and seismic_simulated)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    numcodecs.blosc.set_nthreads(1)  # one thread, as each reading or writing thread runs it
    sets = {}
    if args.dataset:
        sets["dataset seismic"] = zarr.open_group(str(args.dataset), mode="r")["train"]["seismic"][: args.samples]
    if args.pairs:
        pairs = zarr.open_group(str(args.pairs), mode="r")
        sets["pairs seismic (decoded)"] = pairs["seismic"][: args.samples]
        sets["pairs seismic_simulated"] = pairs["seismic_simulated"][: args.samples]
    if not sets:
        parser.error("give --dataset, --pairs or both")
    rows = []
    for codec_name, (codec, _) in CODECS.items():
        if codec is None:
            continue
        for set_name, samples in sets.items():
            raw = [sample.tobytes() for sample in samples]
            encoded = [codec.encode(b) for b in raw]
            rows.append({"codec": codec_name, "samples": set_name, "n": len(raw),
                         "ratio": round(float(np.mean([len(e) / len(b) for e, b in zip(encoded, raw)])), 3),
                         "encode_ms": round(1e3 * seconds_per_call(codec.encode, raw, args.repeats), 2),
                         "decode_ms": round(1e3 * seconds_per_call(codec.decode, encoded, args.repeats), 2),
                         "machine": platform.machine(), "numcodecs": numcodecs.__version__})
            print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for codec_name, (_, codec) in CODECS.items():
            for set_name, samples in sets.items():
                write_ms, read_ms = store_ms(np.tile(samples, (max(1, 64 // len(samples)), 1, 1, 1)), codec,
                                             Path(folder), args.repeats)
                rows.append({"codec": codec_name, "samples": set_name, "store_write_ms": round(write_ms, 2),
                             "store_read_ms": round(read_ms, 2), "machine": platform.machine(),
                             "numcodecs": numcodecs.__version__})
                print(rows[-1], flush=True)
    fields = ["codec", "samples", "n", "ratio", "encode_ms", "decode_ms", "store_write_ms", "store_read_ms",
              "machine", "numcodecs"]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
