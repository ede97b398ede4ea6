"""The forward operator F: velocity maps -> seismic data in OpenFWI's native layout.

Four backends give the same data in the same units, sign and timing: ``"deepwave"``
(default, fast: 4th-order stencil, C-PML, one step per 1 ms), ``"openfwi"`` (reference:
OpenFWI's scheme with its 120-cell sponge, :mod:`.openfwi_fd`; ~20x slower on the CPU),
``"fused"`` (:mod:`.fused`: deepwave's scheme as one Triton kernel that runs all time
steps of a shot in one launch; CUDA only; equal to "deepwave" to float32 rounding; 3x
deepwave on an H100) and ``"fused-cuda"`` (:mod:`.fused_cuda`: the same as a CUDA kernel
holding a shot's fields in shared memory; CUDA only; ~10x deepwave on an H100). The deepwave
and fused paths correct the source sign (``DEEPWAVE_SOURCE_SCALE`` = -1) and a one-sample
recording delay (``DEEPWAVE_DELAY_SAMPLES`` = 1); only the absorbing boundaries still
differ from openfwi.
Details: docs/physics.md, 'The deepwave backend and its calibration' and 'The fused backend'.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import torch
from tqdm import tqdm

from . import openfwi_fd
from .acquisition import CRITICAL_COURANT_NUMBER, OPENFWI_ACQUISITION, Acquisition, ricker

# Backends that run on any device; "fused" needs CUDA (or Triton's interpreter, in tests),
# "fused-cuda" CUDA.
CPU_BACKENDS = ("deepwave", "openfwi")
# the fused backends' modules, each with check_device(device) and simulate(velocity,
# acquisition, source_scale, delay_samples)
FUSED_MODULES = {"fused": "fused", "fused-cuda": "fused_cuda"}
BACKENDS = (*CPU_BACKENDS, *FUSED_MODULES)

# Calibration constants of the deepwave and fused paths (see module docstring).
DEEPWAVE_SOURCE_SCALE = -1.0
DEEPWAVE_DELAY_SAMPLES = 1
DEEPWAVE_ACCURACY = 4


@torch.no_grad()
def forward_model(
    velocity: torch.Tensor,
    backend: str = "deepwave",
    acquisition: Acquisition = OPENFWI_ACQUISITION,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Simulate OpenFWI-style shot gathers for a batch of velocity maps.

    velocity: (B, 1, nz, nx) in m/s (not normalised), float, on CPU or CUDA (CUDA only
    for "fused" and "fused-cuda").
    Returns seismic (B, S, nt, R) float32 on the velocity's device: shots, time samples,
    receivers -- OpenFWI's ``data*.npy`` layout, (B, 5, 1000, 70) by default.

    Runs ``batch_size`` models at a time (memory, outputs included: roughly 12 MB per
    model for "openfwi", 3 MB for "deepwave", 1.5 MB for the fused ones, whose output it
    mostly is; "fused" adds 0.4 MB per Triton program, ~100 MB on an H100). No gradients
    are kept.
    Raises ValueError for an unknown backend, a wrong shape, non-finite values,
    velocities outside [acquisition.min_velocity, acquisition.max_velocity], "fused" on a
    CPU tensor (unless Triton's interpreter is on: see :mod:`.fused`) or "fused-cuda" on one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    velocity = _validated(velocity, acquisition)
    if backend in FUSED_MODULES:
        # imported here: Triton and the NVRTC path are needed by these backends only
        kernel = importlib.import_module(f".{FUSED_MODULES[backend]}", __package__)
        kernel.check_device(velocity.device)
        simulate = functools.partial(
            kernel.simulate, source_scale=DEEPWAVE_SOURCE_SCALE, delay_samples=DEEPWAVE_DELAY_SAMPLES
        )
    else:
        simulate = _simulate_deepwave if backend == "deepwave" else openfwi_fd.simulate

    n_models = velocity.shape[0]
    seismic = velocity.new_empty(n_models, *acquisition.seismic_shape)  # (B, S, T, R)
    with tqdm(total=n_models, unit="model", desc=f"forward ({backend})", disable=not progress) as bar:
        for start in range(0, n_models, batch_size):
            chunk = velocity[start : start + batch_size]  # (b, 1, nz, nx)
            seismic[start : start + len(chunk)] = simulate(chunk, acquisition)
            bar.update(len(chunk))
    return seismic


def _validated(velocity: torch.Tensor, acquisition: Acquisition) -> torch.Tensor:
    """The velocity as contiguous float32, or a ValueError saying what is wrong with it."""
    if not isinstance(velocity, torch.Tensor):
        raise ValueError(f"velocity must be a torch.Tensor, got {type(velocity).__name__}")
    expected = acquisition.velocity_shape
    if velocity.ndim != 4 or tuple(velocity.shape[1:]) != expected:
        raise ValueError(
            f"velocity must have shape (B, {', '.join(map(str, expected))}), "
            f"got {tuple(velocity.shape)}"
        )
    if not velocity.is_floating_point():
        raise ValueError(f"velocity must be a floating-point tensor, got {velocity.dtype}")
    velocity = velocity.detach().to(torch.float32).contiguous()
    if velocity.numel() == 0:
        return velocity
    if not torch.isfinite(velocity).all():
        raise ValueError("velocity contains NaN or infinite values")
    low, high = velocity.min().item(), velocity.max().item()
    if low < acquisition.min_velocity or high > acquisition.max_velocity:
        raise ValueError(
            f"velocity spans [{low:g}, {high:g}] m/s, outside the accepted "
            f"[{acquisition.min_velocity:g}, {acquisition.max_velocity:g}] m/s "
            "(OpenFWI maps are 1500-4500 m/s; denormalise [-1, 1] maps before modelling)"
        )
    return velocity


def _simulate_deepwave(
    velocity: torch.Tensor,
    acquisition: Acquisition,
    source_scale: float = DEEPWAVE_SOURCE_SCALE,
    delay_samples: int = DEEPWAVE_DELAY_SAMPLES,
) -> torch.Tensor:
    """Shot gathers with deepwave.scalar, calibrated to OpenFWI's conventions.

    velocity: (B, 1, nz, nx) float32 m/s.  Returns (B, S, nt, R) float32.
    ``source_scale`` and ``delay_samples`` exist so the calibration can run deepwave
    uncalibrated (1.0, 0); everything else uses the calibrated defaults.

    Every shot of every model is one deepwave shot, with its own copy of the model
    (deepwave's batched-model mode), so the whole chunk is one call. ``max_vel`` is the
    acquisition's upper velocity bound, not the chunk's maximum, so the PML and the time
    step -- and hence the data -- do not depend on which models share a chunk; the
    Courant number is set just above that bound's so deepwave takes exactly one internal
    step per dt (OpenFWI's time stepping, no resampling of the source or the traces).
    """
    # imported here: deepwave imports torch._dynamo (~1.5 s), which every job importing
    # this module would pay, though most simulate nothing or use another backend
    import deepwave

    acq = acquisition
    b, s, r = velocity.shape[0], acq.n_shots, acq.n_receivers
    device = velocity.device
    models = velocity[:, 0].repeat_interleave(s, dim=0)  # (B*S, nz, nx), model-major

    # (z, x) grid indices; deepwave orders dimensions slowest (depth) to fastest.
    sources = torch.tensor([[[acq.source_depth, col]] for col in acq.source_columns], device=device)
    sources = sources.repeat(b, 1, 1)  # (B*S, 1, 2)
    receivers = torch.tensor([[acq.receiver_depth, col] for col in acq.receivers], device=device)
    receivers = receivers[None].expand(b * s, r, 2)  # (B*S, R, 2)

    n_steps = acq.n_steps + delay_samples
    wavelet = source_scale * ricker(acq.peak_frequency, acq.dt, n_steps, device=device)
    amplitudes = wavelet[None, None, :].expand(b * s, 1, n_steps)  # (B*S, 1, T)

    out = deepwave.scalar(
        models,
        acq.dx,
        acq.dt,
        source_amplitudes=amplitudes,
        source_locations=sources,
        receiver_locations=receivers,
        accuracy=DEEPWAVE_ACCURACY,
        pml_width=acq.pml_width,
        pml_freq=acq.peak_frequency,
        max_vel=acq.max_velocity,
        courant_number=_one_step_courant_number(acq),
    )
    traces = out.receiver_amplitudes  # (B*S, R, T)
    traces = traces[..., acq.dropped_samples + delay_samples :]  # (B*S, R, nt)
    return traces.reshape(b, s, r, acq.nt).transpose(2, 3)  # (B, S, nt, R)


def _one_step_courant_number(acquisition: Acquisition) -> float:
    """A Courant number target that makes deepwave take one internal step per dt.

    deepwave takes ceil(C(max_vel) / target) internal steps; C(max_vel) is below the
    scheme's stability limit by the Acquisition's own check, and the 1e-6 margin keeps
    the ceiling at 1 despite rounding.
    """
    return min(acquisition.courant_number * (1.0 + 1e-6), CRITICAL_COURANT_NUMBER - 1e-9)


def far_boundary_reference(velocity: torch.Tensor, acquisition: Acquisition = OPENFWI_ACQUISITION, extra: int = 250) -> torch.Tensor:
    """Data of the same maps with their absorbing boundary moved `extra` cells further out.

    The maps are extended by replicating their edges (what both backends' boundaries
    assume) and run with the openfwi stencil. With `extra` large enough that nothing the
    boundary returns reaches a receiver within the record (250 cells: > 1 s even at
    4500 m/s), differences against this are a backend's own absorbing-boundary error.
    """
    acq = acquisition
    big = dataclasses.replace(
        acq,
        nz=acq.nz + 2 * extra,
        nx=acq.nx + 2 * extra,
        source_columns=tuple(c + extra for c in acq.source_columns),
        source_depth=acq.source_depth + extra,
        receiver_columns=tuple(c + extra for c in acq.receivers),
        receiver_depth=acq.receiver_depth + extra,
    )
    padded = torch.nn.functional.pad(velocity, (extra,) * 4, mode="replicate")
    return openfwi_fd.simulate(padded, big)
