"""Forward-modelling benchmarks: throughput of the backends, and their calibration.

Throughput (default): models/s of ``forward_model`` for each backend and batch size on
one device, as a markdown table; ``--append`` adds it to benchmarks/README.md. The
backends default to all of them on CUDA (the fused Triton kernel needs CUDA) and to
deepwave and openfwi on the CPU. When deepwave and a fused backend run, their agreement on
16 real maps is printed first and the fused / deepwave speed-up per batch size after the table.

    python benchmarks/forward_modelling.py --device cpu --batch-sizes 1,16,64
    python benchmarks/forward_modelling.py --device cuda --batch-sizes 1,16,64,256,1024 \
        --machine "1x H100 80GB" --append
    python benchmarks/forward_modelling.py --device cuda --backends deepwave,fused,fused-cuda \
        --batch-sizes 16,256,1024 --repeats 3 --fused-tiles 16x8x1,16x8x2,16x16x1 --machine "1x H100 80GB"

Calibration (``--calibrate``): the numbers in docs/physics.md -- the scale and time
shift that best align uncalibrated deepwave with the openfwi stencil, the relative
difference of the two (calibrated) backends on real OpenFWI maps and in constant
media, both backends' absorbing-boundary error against a reference whose boundary is
too far away to be seen, value ranges, and the backend difference as a mean squared
error in the normalised (log, [-1, 1]) seismic space that the paper's PDE deviation uses.

    python benchmarks/forward_modelling.py --calibrate --maps 16 --reference-maps 4

``--kernel NAME=FILE`` (repeatable) times another version of the fused-cuda module, FILE
(e.g. the base commit's: ``git show BASE:src/wavediffusion/physics/fused_cuda.py >
.base/fused_cuda.py``, or a variant being tried), as the backend ``fused-cuda@NAME``
beside the others: a kernel change's before and after in one run on one machine.

``--fastest`` prints only the name of the fastest backend at batch 256 among deepwave and
the fused backends that run on this device and agree with deepwave (per-model relative L2
<= 1e-4 on 16 real maps): how a GPU run chooses ``physics.backend``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import sys
import time
from pathlib import Path

import deepwave
import torch

from wavediffusion.data.embedded import load_real_velocity
from wavediffusion.physics import forward as fwd
from wavediffusion.physics import fused
from wavediffusion.physics.acquisition import OPENFWI_ACQUISITION
from wavediffusion.physics.forward import BACKENDS, CPU_BACKENDS, FUSED_MODULES, far_boundary_reference, forward_model

README = Path(__file__).with_name("README.md")
FAMILIES = ("FlatVel-A", "CurveVel-A")
# OpenFWI's published seismic value range per family (lanl/OpenFWI dataset_config.json).
OPENFWI_DATA_RANGE = {"FlatVel-A": (-26.95, 52.77), "CurveVel-A": (-27.11, 55.10)}
# The direct wave dominates the first ~300 ms (~99 % of a record's L2 norm); differences
# in the absorbing boundaries show in the late part, reported separately from here on.
LATE = 500


def real_maps(n: int, family: str = "FlatVel-A") -> torch.Tensor:
    """The first n test maps of a family (cycled if n > 1000): (n, 1, 70, 70) m/s."""
    maps = torch.from_numpy(load_real_velocity(family, "test"))
    return maps[torch.arange(n) % len(maps)]


# ---------------------------------------------------------------- throughput


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(backend: str, batch_size: int, device: torch.device, repeats: int) -> float:
    """Models per second of forward_model on `repeats` batches of `batch_size` models."""
    velocity = real_maps(batch_size).to(device)  # (B, 1, 70, 70)
    forward_model(velocity[: min(batch_size, 2)], backend, batch_size=batch_size)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        forward_model(velocity, backend, batch_size=batch_size)
    _sync(device)
    return batch_size * repeats / (time.perf_counter() - start)


def agreement_maps(device: torch.device) -> torch.Tensor:
    """The 16 real maps (8 a family) on which the fused backends are held to deepwave."""
    return torch.cat([real_maps(8, family) for family in FAMILIES]).to(device)


def fused_agreement(backend: str, velocity: torch.Tensor, reference: torch.Tensor) -> str:
    """Per-model relative L2 of a fused backend against deepwave's `reference` data of the
    maps `velocity` (float32 rounding: ~1e-6)."""
    errors = relative_difference(forward_model(velocity, backend), reference)
    return (f"{backend} vs deepwave on {len(velocity)} real maps, per-model relative L2: "
            f"median {errors.median().item():.2e}, max {errors.max().item():.2e}")


def fused_tile_sweep(device: torch.device, tiles: str, batch_size: int, repeats: int) -> None:
    """models/s of the fused kernel for each "ROWSxWARPSxPROGRAMS" of `tiles` (rows of the
    padded grid per tile, warps per program, programs per multiprocessor) at one batch
    size: the data for fused.ROWS_PER_TILE, NUM_WARPS and PROGRAMS_PER_SM."""
    chosen = (fused.ROWS_PER_TILE, fused.NUM_WARPS, fused.PROGRAMS_PER_SM)
    print(f"| rows per tile | warps | programs per SM | models/s at batch {batch_size} |\n|---|---|---|---|",
          flush=True)
    try:
        for tile in tiles.split(","):
            fused.ROWS_PER_TILE, fused.NUM_WARPS, fused.PROGRAMS_PER_SM = (int(n) for n in tile.split("x"))
            rate = throughput("fused", batch_size, device, repeats)
            print(f"| {fused.ROWS_PER_TILE} | {fused.NUM_WARPS} | {fused.PROGRAMS_PER_SM} | {rate:.1f} |", flush=True)
    finally:
        fused.ROWS_PER_TILE, fused.NUM_WARPS, fused.PROGRAMS_PER_SM = chosen
    print()


def register_kernel(name_and_path: str) -> str:
    """Load the fused-cuda module of "NAME=FILE" as one more backend of forward_model for
    this process, "fused-cuda@NAME"; returns that name."""
    name, _, path = name_and_path.partition("=")
    if not name.isidentifier() or not path:
        raise SystemExit(f"--kernel {name_and_path!r}: expected NAME=FILE with NAME a Python identifier")
    backend, module = f"fused-cuda@{name}", f"fused_cuda_{name}"
    spec = importlib.util.spec_from_file_location(f"{fwd.__package__}.{module}", path)
    if spec is None:
        raise SystemExit(f"--kernel {name_and_path}: {path} is not a Python file")
    kernel = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = kernel
    spec.loader.exec_module(kernel)
    FUSED_MODULES[backend] = module
    fwd.BACKENDS = (*fwd.BACKENDS, backend)
    return backend


def throughput_table(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    backends = args.backends.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    fast = [backend for backend in FUSED_MODULES if backend in backends]
    if "deepwave" in backends and fast:
        velocity = agreement_maps(device)
        reference = forward_model(velocity, "deepwave")
        for backend in fast:
            print(fused_agreement(backend, velocity, reference) + "\n", flush=True)
    if args.fused_tiles:
        fused_tile_sweep(device, args.fused_tiles, max(batch_sizes), args.repeats)
    machine = args.machine or (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    today = datetime.date.today().isoformat()
    rows = [
        "| machine | device | backend | batch size | models/s | s/model | torch | deepwave | date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(rows), flush=True)
    rates = {}
    for backend in backends:
        for batch_size in batch_sizes:
            rate = rates[backend, batch_size] = throughput(backend, batch_size, device, args.repeats)
            rows.append(
                f"| {machine} | {device.type} | {backend} | {batch_size} | {rate:.2f} | "
                f"{1.0 / rate:.3f} | {torch.__version__} | {deepwave.__version__} | {today} |"
            )
            print(rows[-1], flush=True)
    for fast in FUSED_MODULES:
        speedups = [
            f"batch {b}: {rates[fast, b] / rates['deepwave', b]:.1f}x"
            for b in batch_sizes
            if (fast, b) in rates and ("deepwave", b) in rates
        ]
        if speedups:
            rows.append(f"\n{fast} / deepwave models/s on {machine}: " + ", ".join(speedups))
            print(rows[-1], flush=True)
    return "\n".join(rows)


def fastest_backend(device: torch.device, batch_size: int = 256, tolerance: float = 1e-4) -> str:
    """The backend a GPU run should check its pairs with: the fastest at `batch_size` of
    deepwave and the fused backends that run here and agree with deepwave on 16 real maps
    (per-model relative L2 <= tolerance, the fused tests' bound). Every candidate's
    outcome goes to stderr."""
    velocity = agreement_maps(device)
    reference = forward_model(velocity, "deepwave")
    rates = {"deepwave": throughput("deepwave", batch_size, device, repeats=1)}
    print(f"deepwave: {rates['deepwave']:.0f} models/s at batch {batch_size}", file=sys.stderr)
    for backend in FUSED_MODULES:
        try:
            error = relative_difference(forward_model(velocity, backend), reference).max().item()
        except Exception as failure:  # a kernel that does not build or run here is not chosen
            print(f"{backend}: fails here ({type(failure).__name__}: {failure})", file=sys.stderr)
            continue
        if not error <= tolerance:
            print(f"{backend}: disagrees with deepwave (relative L2 up to {error:.2e})", file=sys.stderr)
            continue
        # each as it comes: a kernel that then brings the process down leaves its numbers
        rates[backend] = throughput(backend, batch_size, device, repeats=1)
        print(f"{backend}: relative L2 up to {error:.2e}, {rates[backend]:.0f} models/s at batch {batch_size}",
              file=sys.stderr)
    return max(rates, key=rates.get)


# ---------------------------------------------------------------- calibration


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-model ||a - b|| / ||b|| over (shots, time, receivers): (B,)."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def fit_scale_and_shift(x: torch.Tensor, y: torch.Tensor, max_shift: int = 3) -> list[tuple[int, float, float]]:
    """For each integer shift s, the least-squares scale a of a * x[t + s] ~ y[t].

    x, y: (B, S, T, R). Returns [(shift, scale, relative residual)], time axis dim 2.
    """
    fits = []
    n_t = x.shape[2]
    for shift in range(-max_shift, max_shift + 1):
        xs = x[:, :, max(shift, 0) : n_t + min(shift, 0)]
        ys = y[:, :, max(-shift, 0) : n_t - max(shift, 0)]
        scale = (xs * ys).sum() / (xs * xs).sum()
        fits.append((shift, scale.item(), ((scale * xs - ys).norm() / ys.norm()).item()))
    return fits


def normalised(seismic: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """OpenFWI's seismic transform: sign(x) log1p(|x|), then min-max to [-1, 1]."""

    def log(x):
        return torch.sign(x) * torch.log1p(torch.abs(x))

    low, high = (log(torch.tensor(v)) for v in data_range)
    return 2.0 * (log(seismic) - low) / (high - low) - 1.0


def calibrate(args: argparse.Namespace) -> None:
    acq = OPENFWI_ACQUISITION
    device = torch.device(args.device)
    print(f"# Calibration, {args.maps} maps per family, device {device}, {datetime.date.today()}\n")
    for family in FAMILIES:
        velocity = real_maps(args.maps, family).to(device)
        start = time.perf_counter()
        openfwi = forward_model(velocity, "openfwi", batch_size=8)
        t_openfwi = time.perf_counter() - start
        start = time.perf_counter()
        deep = forward_model(velocity, "deepwave")
        t_deep = time.perf_counter() - start
        raw = fwd._simulate_deepwave(velocity, acq, source_scale=1.0, delay_samples=0)

        print(f"## {family} ({args.maps} test maps; openfwi {t_openfwi:.1f} s, deepwave {t_deep:.1f} s)\n")
        print("Uncalibrated deepwave (source +wavelet, no delay) fitted to openfwi:\n")
        print("| shift (samples) | best scale | relative residual |\n|---|---|---|")
        for shift, scale, residual in fit_scale_and_shift(raw, openfwi):
            print(f"| {shift:+d} | {scale:+.5f} | {residual:.4f} |")
        print("\nCalibrated backends, per map ||F_deepwave - F_openfwi|| / ||F_openfwi|| and the MSE "
              "between them after OpenFWI's normalisation (log, [-1, 1] with the family's range):\n")
        print("| window | all maps together | per-map mean | per-map min | per-map max |\n|---|---|---|---|---|")
        for window, part in (("whole record", slice(None)), (f"t >= {LATE} samples", slice(LATE, None))):
            a, b = deep[:, :, part], openfwi[:, :, part]
            rel = relative_difference(a, b)
            print(f"| {window} | {((a - b).norm() / b.norm()).item():.4f} | {rel.mean().item():.4f} | "
                  f"{rel.min().item():.4f} | {rel.max().item():.4f} |")
        low, high = OPENFWI_DATA_RANGE[family]
        mse = (normalised(deep, (low, high)) - normalised(openfwi, (low, high))).pow(2).flatten(1).mean(dim=1)
        print(f"| normalised MSE | {mse.mean().item():.2e} | {mse.mean().item():.2e} | "
              f"{mse.min().item():.2e} | {mse.max().item():.2e} |\n")
        for name, data in (("openfwi", openfwi), ("deepwave", deep)):
            print(f"Value range {name}: [{data.min().item():.2f}, {data.max().item():.2f}]")
        if args.range_maps > args.maps:
            many = forward_model(real_maps(args.range_maps, family).to(device), "deepwave")
            print(f"Value range deepwave, first {args.range_maps} test maps: "
                  f"[{many.min().item():.2f}, {many.max().item():.2f}]")
            del many
        print(f"OpenFWI's published range for the whole family: [{low}, {high}]")

        n_ref = min(args.reference_maps, args.maps)
        if n_ref > 0:
            reference = far_boundary_reference(velocity[:n_ref], acq)
            for name, data in (("openfwi", openfwi), ("deepwave", deep)):
                err = relative_difference(data[:n_ref], reference)
                err_late = relative_difference(data[:n_ref, :, LATE:], reference[:, :, LATE:])
                print(
                    f"Boundary error {name} vs far-boundary reference ({n_ref} maps): whole record "
                    f"mean {err.mean().item():.2e} max {err.max().item():.2e}; t >= {LATE}: "
                    f"mean {err_late.mean().item():.2e} max {err_late.max().item():.2e}"
                )
        print()

    if args.reference_maps > 0:
        print("## Constant-velocity media\n")
        speeds = (1500.0, 3000.0, 4500.0)
        velocity = torch.tensor(speeds, device=device)[:, None, None, None].expand(-1, 1, 70, 70).contiguous()
        openfwi = forward_model(velocity, "openfwi")
        deep = forward_model(velocity, "deepwave")
        reference = far_boundary_reference(velocity, acq)
        rel = relative_difference(deep, openfwi)
        print("| v (m/s) | deepwave vs openfwi | openfwi boundary error | deepwave boundary error "
              "| openfwi peak reflection | deepwave peak reflection |\n|---|---|---|---|---|---|")
        for i, speed in enumerate(speeds):
            peak = reference[i].abs().max()
            cells = [
                f"{rel[i].item():.2e}",
                f"{relative_difference(openfwi[i : i + 1], reference[i : i + 1]).item():.2e}",
                f"{relative_difference(deep[i : i + 1], reference[i : i + 1]).item():.2e}",
                f"{((openfwi[i] - reference[i]).abs().max() / peak).item():.2e}",
                f"{((deep[i] - reference[i]).abs().max() / peak).item():.2e}",
            ]
            print(f"| {speed:.0f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default=None, help=f"comma-separated (default: {','.join(BACKENDS)} "
                        f"on CUDA, {','.join(CPU_BACKENDS)} on the CPU)")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per cell")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--machine", default=None, help="machine name for the table")
    parser.add_argument("--append", action="store_true", help=f"append the table to {README}")
    parser.add_argument("--fused-tiles", default=None,
                        help="e.g. 16x8x1,16x8x2: time the fused kernel at these ROWSxWARPSxPROGRAMS_PER_SM "
                        "first (at the largest batch size)")
    parser.add_argument("--kernel", action="append", default=[], metavar="NAME=FILE",
                        help="another fused_cuda.py to time beside the others, as fused-cuda@NAME (repeatable)")
    parser.add_argument("--fastest", action="store_true",
                        help="print only the name of the fastest backend that agrees with deepwave")
    parser.add_argument("--calibrate", action="store_true", help="print the calibration numbers instead")
    parser.add_argument("--maps", type=int, default=16, help="real maps per family (calibration)")
    parser.add_argument("--range-maps", type=int, default=1000, help="maps for deepwave's value range (calibration)")
    parser.add_argument("--reference-maps", type=int, default=4, help="maps run against the far-boundary reference")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backends is None:
        args.backends = ",".join(BACKENDS if torch.device(args.device).type == "cuda" else CPU_BACKENDS)
    for kernel in args.kernel:
        args.backends += "," + register_kernel(kernel)
    if args.fastest:
        print(fastest_backend(torch.device(args.device)))
        return
    print(f"torch {torch.__version__}, deepwave {deepwave.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads\n")
    if args.calibrate:
        calibrate(args)
        return
    table = throughput_table(args)
    if args.append:
        with README.open("a") as readme:
            readme.write(f"\n{table}\n")
        print(f"appended to {README}")


if __name__ == "__main__":
    main()
