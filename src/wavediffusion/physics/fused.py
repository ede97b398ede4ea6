"""The "fused" forward-modelling backend: deepwave's scalar scheme as one Triton kernel.

The same scheme as the "deepwave" backend (deepwave.scalar at accuracy 4, C-PML, one
step per dt; see forward.py and docs/physics.md), so the same calibration constants hold
and the data agree to float32 rounding. What differs is how it runs: deepwave launches
one kernel per time step, reading and writing every wavefield in GPU memory each time;
here each Triton program simulates its shots for all time steps inside a single launch, so
that their wavefields can stay in the L1/L2 caches (measured: docs/physics.md, "The fused
backend").

Two parts:

- :func:`prepare` (torch, once per acquisition and device): the PML profile vectors,
  source and receiver cells, and the calibrated wavelet; :func:`simulate` adds per chunk
  the padded v^2 dt^2 of every model and each shot's source term.
- :func:`_shot_kernel` (Triton): a fixed number of programs, each taking every
  programs-th shot of the batch (models x shots) with a time loop inside the kernel, the
  receiver traces written straight into the output.

The kernel runs on CUDA tensors; with ``TRITON_INTERPRET=1`` in the environment when
this module is first imported, Triton's interpreter runs it on CPU tensors instead
(slowly, through numpy: how the tests check it on a machine without a GPU).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .acquisition import Acquisition, ricker

# deepwave's scalar scheme at accuracy 4: the stencil reaches 2 cells, so deepwave pads
# every model by FD_PAD cells outside its PML and never updates those cells (they stay 0).
FD_PAD = 2
# deepwave's C-PML defaults (deepwave/_common.py, setup_pml): target reflection
# coefficient and the polynomial degree of the damping profile.
PML_REFLECTION = 0.001
PML_POWER = 2
# Fields kept per shot in the scratch buffer, each (NY, NX) on the padded grid: the
# wavefield (2 copies: 0, 1), psi_y (2, 3), psi_x (4, 5), zeta_y (6), zeta_x (7). The
# wavefield and psi ping-pong between two copies, since a cell's update reads its
# neighbours' old values; zeta is read and written by its own cell only, so one copy
# suffices (as in deepwave's scalar.c). The kernel hard-codes this layout.
N_FIELDS = 8


# ---------------------------------------------------------------- setup (torch)


@dataclass(frozen=True)
class FusedSetup:
    """Everything the time loop needs that depends only on the acquisition and device.

    The padded grid is (ny, nx) = (nz + 2 pad, nx + 2 pad) with pad = FD_PAD + pml_width
    cells on each side, as deepwave pads the model. Profile vectors are float32 on the
    padded axis (deepwave's a, b and db/dx per axis); indices are flat int32 positions on
    the padded grid.
    """

    ny: int
    nx: int
    pad: int
    a_y: torch.Tensor  # (ny,) C-PML profiles along depth
    b_y: torch.Tensor
    dbdy: torch.Tensor
    a_x: torch.Tensor  # (nx,) C-PML profiles along the lateral axis
    b_x: torch.Tensor
    dbdx: torch.Tensor
    # Cells [FD_PAD, pml_begin) and [pml_end, n - FD_PAD) take the PML update, per axis:
    # deepwave's pml_b/pml_e (deepwave/_engine.py, _pml_region), pml_width + 2 FD_PAD
    # from each edge, because db/dx and the psi stencil reach FD_PAD cells further in.
    pml_begin_y: int
    pml_end_y: int
    pml_begin_x: int
    pml_end_x: int
    source_index: torch.Tensor  # (S,) int32, one source cell per shot
    receiver_index: torch.Tensor  # (R,) int32
    source_rows: tuple[int, ...]  # (S,) padded row and column of each source, to read v there
    source_columns: tuple[int, ...]
    wavelet: torch.Tensor  # (n_steps,) float32, source amplitude per step, calibrated sign
    n_steps: int  # steps simulated: the recorded ones plus the dropped ones
    first_recorded_step: int


def cpml_profiles(
    n: int, pml_width: int, dx: float, dt: float, max_velocity: float, pml_frequency: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """deepwave's C-PML profiles a, b and db/dx along one padded axis of n cells.

    As deepwave 0.1.0 builds them: deepwave/_common.py ``setup_pml`` with
    ``pml_sigma_alpha`` (its non-logarithmic branch, the one our magnitudes take) and
    deepwave/_regular_grid.py ``set_pml_profiles`` (pml_start, db/dx by ``diffx1`` at
    accuracy 4). Computed here in float64 and rounded once, so they equal deepwave's
    float32 profiles to float32 rounding (a test compares them).

    Returns three float32 (n,) tensors on the CPU: a = exp(-(sigma + alpha) dt),
    b = sigma / (sigma + alpha) * (a - 1), and the 4th-order db/dx (1/m); all three are
    zero in the interior. sigma rises as the square of the depth into the layer to
    3 max_velocity ln(1/R) / (2 pml_width dx); alpha falls from pi f to 0 across it.
    """
    x = torch.arange(n, dtype=torch.float64)
    first_interior = float(FD_PAD + pml_width)  # deepwave's pml_start, in cells
    last_interior = float(n - 1 - FD_PAD - pml_width)
    depth_low = ((first_interior - x) / pml_width).clamp(0, 1)  # fraction into each layer
    depth_high = ((x - last_interior) / pml_width).clamp(0, 1)
    sigma_max = -(1 + PML_POWER) * math.log(PML_REFLECTION) / (2 * pml_width)  # per cell
    sigma_dt = sigma_max * (depth_low**PML_POWER + depth_high**PML_POWER) * (max_velocity * dt / dx)
    depth = torch.maximum(depth_low, depth_high)
    alpha_dt = math.pi * pml_frequency * (1 - depth) * dt
    total = sigma_dt + alpha_dt
    ratio = torch.where(total == 0, torch.zeros_like(total), sigma_dt / total).clamp(0, 1)
    a = torch.exp(-total)
    b = ratio * torch.expm1(-total).clamp(-1, 0)
    a[depth == 0] = 0.0  # inactive cells (the interior): a is 0 there, as in deepwave
    dbdx = torch.zeros_like(b)
    dbdx[2:-2] = (8 / 12 * (b[3:-1] - b[1:-3]) - 1 / 12 * (b[4:] - b[:-4])) / dx
    return a.float(), b.float(), dbdx.float()


@functools.lru_cache(maxsize=8)
def prepare(acquisition: Acquisition, device: torch.device, source_scale: float, delay_samples: int) -> FusedSetup:
    """The per-acquisition part of the setup, on `device` (cached: it never changes).

    ``source_scale`` and ``delay_samples`` are forward.py's calibration constants
    (DEEPWAVE_SOURCE_SCALE, DEEPWAVE_DELAY_SAMPLES): the wavelet is scaled by the first,
    and the second adds steps simulated and leading samples dropped, exactly as the
    deepwave backend does.
    """
    acq = acquisition
    pad = FD_PAD + acq.pml_width
    ny, nx = acq.nz + 2 * pad, acq.nx + 2 * pad
    profiles_y = cpml_profiles(ny, acq.pml_width, acq.dx, acq.dt, acq.max_velocity, acq.peak_frequency)
    profiles_x = cpml_profiles(nx, acq.pml_width, acq.dx, acq.dt, acq.max_velocity, acq.peak_frequency)
    a_y, b_y, dbdy, a_x, b_x, dbdx = (p.to(device) for p in (*profiles_y, *profiles_x))
    pml_reach = acq.pml_width + 2 * FD_PAD

    source_rows = (acq.source_depth + pad,) * acq.n_shots
    source_columns = tuple(c + pad for c in acq.source_columns)
    source_index = [r * nx + c for r, c in zip(source_rows, source_columns)]
    receiver_index = [(acq.receiver_depth + pad) * nx + c + pad for c in acq.receivers]

    n_steps = acq.n_steps + delay_samples
    wavelet = source_scale * ricker(acq.peak_frequency, acq.dt, n_steps, device=device)
    return FusedSetup(
        ny=ny,
        nx=nx,
        pad=pad,
        a_y=a_y,
        b_y=b_y,
        dbdy=dbdy,
        a_x=a_x,
        b_x=b_x,
        dbdx=dbdx,
        pml_begin_y=pml_reach,
        pml_end_y=ny - pml_reach,
        pml_begin_x=pml_reach,
        pml_end_x=nx - pml_reach,
        source_index=torch.tensor(source_index, dtype=torch.int32, device=device),
        receiver_index=torch.tensor(receiver_index, dtype=torch.int32, device=device),
        source_rows=source_rows,
        source_columns=source_columns,
        wavelet=wavelet,
        n_steps=n_steps,
        first_recorded_step=acq.dropped_samples + delay_samples,
    )


# ---------------------------------------------------------------- the kernel (Triton)


# Design. A fixed number of programs, each running its shots one after the other with the
# time loop inside the program, so one launch does the whole batch. Triton has no explicit
# shared memory, so each program keeps its fields in its own region of a global scratch
# buffer (N_FIELDS x 114 x 114 float32 for OpenFWI, 0.4 MB, the psi and zeta fields touched
# only in their PML strips; few programs, so that all their fields can stay in L2: with
# one program per shot they went to HBM), clears them before each shot, and every step (1) records
# the receivers, (2) sweeps the grid in row tiles of BLOCK_Y x BLOCK_X cells (masked to
# the grid), reading the step's old fields and writing the new ones, then (3) waits at a
# barrier, so that the next step's loads see every thread's stores. Within one step no
# tile reads what another tile writes (new wavefield and new psi go to the other copy;
# zeta and the previous wavefield are read and written by the same cell only), so one
# barrier per step suffices. Row tiles bound the registers a program needs on a GPU; under
# the interpreter one tile covering the whole grid is fastest.


@triton.jit
def _axis_term(
    u_ptr,  # current wavefield of this shot, (NY, NX)
    psi_ptr,  # this axis' psi: the old copy (read) ...
    psi_new_ptr,  # ... and the new one (written, PML cells only)
    zeta_ptr,  # this axis' zeta, updated in place (PML cells only)
    a_ptr,  # this axis' C-PML profile vectors
    b_ptr,
    db_ptr,
    index,  # [BY, BX] flat cell index on the padded grid
    stride,  # 1 (lateral axis) or NX (depth axis): one cell along this axis
    position,  # [BY, 1] or [1, BX]: the cells' position along this axis
    inside,  # [BY, BX]: the cells updated (the grid less its FD_PAD border)
    in_pml,  # like position: positions inside the grid and in this axis' PML
    u,  # [BY, BX]: the wavefield at the cells
    rd,  # 1 / dx, 1/m
    rd2,  # 1 / dx^2
):
    """One axis' share of deepwave's forward_cell (deepwave/scalar_kernels.h), [BY, BX].

    Outside this axis' PML: the 4th-order second difference d2. In it:
    (1 + b) tmp + a zeta with tmp = (1 + b) d2 + db d1 + D1(a psi); also stores
    psi_new = b d1 + a psi and zeta = b tmp + a zeta there.
    """
    u_p1 = tl.load(u_ptr + index + stride, mask=inside, other=0.0)
    u_m1 = tl.load(u_ptr + index - stride, mask=inside, other=0.0)
    u_p2 = tl.load(u_ptr + index + 2 * stride, mask=inside, other=0.0)
    u_m2 = tl.load(u_ptr + index - 2 * stride, mask=inside, other=0.0)
    # deepwave's DIFF2 and DIFF1 at accuracy 4 (deepwave/regular_grid.h), same grouping.
    d2 = ((4.0 / 3.0) * ((u_p1 - u) + (u_m1 - u)) + (-1.0 / 12.0) * ((u_p2 - u) + (u_m2 - u))) * rd2

    pml = inside & in_pml
    d1 = ((8.0 / 12.0) * (u_p1 - u_m1) + (-1.0 / 12.0) * (u_p2 - u_m2)) * rd
    a = tl.load(a_ptr + position, mask=in_pml, other=0.0)
    b = tl.load(b_ptr + position, mask=in_pml, other=0.0)
    db = tl.load(db_ptr + position, mask=in_pml, other=0.0)
    psi = tl.load(psi_ptr + index, mask=pml, other=0.0)
    # D1(a psi): a and psi at the neighbours along this axis.
    apsi_p1 = tl.load(a_ptr + position + 1, mask=in_pml, other=0.0) * tl.load(
        psi_ptr + index + stride, mask=pml, other=0.0
    )
    apsi_m1 = tl.load(a_ptr + position - 1, mask=in_pml, other=0.0) * tl.load(
        psi_ptr + index - stride, mask=pml, other=0.0
    )
    apsi_p2 = tl.load(a_ptr + position + 2, mask=in_pml, other=0.0) * tl.load(
        psi_ptr + index + 2 * stride, mask=pml, other=0.0
    )
    apsi_m2 = tl.load(a_ptr + position - 2, mask=in_pml, other=0.0) * tl.load(
        psi_ptr + index - 2 * stride, mask=pml, other=0.0
    )
    d1_apsi = ((8.0 / 12.0) * (apsi_p1 - apsi_m1) + (-1.0 / 12.0) * (apsi_p2 - apsi_m2)) * rd
    tmp = (1 + b) * d2 + db * d1 + d1_apsi
    zeta = tl.load(zeta_ptr + index, mask=pml, other=0.0)
    tl.store(psi_new_ptr + index, b * d1 + a * psi, mask=pml)
    tl.store(zeta_ptr + index, b * tmp + a * zeta, mask=pml)
    return tl.where(pml, (1 + b) * tmp + a * zeta, d2)


@triton.jit
def _record(u_ptr, out_ptr, receiver_index, receivers, receiver_mask):
    """Store the wavefield at the receiver cells into one time sample of the output."""
    values = tl.load(u_ptr + receiver_index, mask=receiver_mask, other=0.0)
    tl.store(out_ptr + receivers, values, mask=receiver_mask)


@triton.jit
def _shot_kernel(
    v2dt2_ptr,  # (n_models, NY, NX) float32: v^2 dt^2 on the padded grid, m^2
    source_term_ptr,  # (n_shots, n_steps) float32: added at the source cell after each step
    source_index_ptr,  # (SHOTS_PER_MODEL,) int32: flat source cell of each shot of a model
    receiver_index_ptr,  # (n_receivers,) int32: flat receiver cells
    a_y_ptr,  # (NY,) float32 C-PML profiles along depth
    b_y_ptr,
    dbdy_ptr,
    a_x_ptr,  # (NX,) float32 C-PML profiles along the lateral axis
    b_x_ptr,
    dbdx_ptr,
    scratch_ptr,  # (programs, N_FIELDS, NY, NX) float32: each program's fields
    out_ptr,  # (n_shots, n_steps - first_recorded_step, n_receivers) float32
    n_shots,
    n_steps,
    first_recorded_step,
    n_receivers,
    pml_begin_y,
    pml_end_y,
    pml_begin_x,
    pml_end_x,
    rdy,
    rdy2,
    rdx,
    rdx2,
    NY: tl.constexpr,
    NX: tl.constexpr,
    SHOTS_PER_MODEL: tl.constexpr,
    BLOCK_Y: tl.constexpr,  # rows per tile
    BLOCK_X: tl.constexpr,  # >= NX, a power of 2
    BLOCK_R: tl.constexpr,  # >= n_receivers, a power of 2
):
    """Simulate shots program_id, program_id + programs, ... each for all steps.

    Step t, as deepwave's scalar.c: record u^t at the receivers; u^{t+1} =
    v^2 dt^2 w_sum + 2 u^t - u^{t-1} at every cell but the FD_PAD border, with w_sum the
    sum of both axes' _axis_term; add the source term at the source cell to u^{t+1}.
    """
    program = tl.program_id(0)
    field = NY * NX
    scratch = scratch_ptr + program.to(tl.int64) * (8 * field)  # 8 = N_FIELDS
    receivers = tl.arange(0, BLOCK_R)
    receiver_mask = receivers < n_receivers
    receiver_index = tl.load(receiver_index_ptr + receivers, mask=receiver_mask, other=0)

    columns = tl.arange(0, BLOCK_X)[None, :]
    columns_inside = (columns >= 2) & (columns < NX - 2)  # 2 = FD_PAD
    columns_in_pml = columns_inside & ((columns < pml_begin_x) | (columns >= pml_end_x))
    zeta_y = scratch + 6 * field
    zeta_x = scratch + 7 * field

    for shot_number in range(program, n_shots, tl.num_programs(0)):
        shot = tl.cast(shot_number, tl.int64)  # offsets of large batches pass 2^31
        v2dt2 = v2dt2_ptr + (shot // SHOTS_PER_MODEL) * field
        source_index = tl.load(source_index_ptr + shot % SHOTS_PER_MODEL)
        source_terms = source_term_ptr + shot * n_steps
        out = out_ptr + shot * (n_steps - first_recorded_step) * n_receivers
        _simulate_shot(
            v2dt2, source_terms, source_index, receiver_index, receivers, receiver_mask,
            a_y_ptr, b_y_ptr, dbdy_ptr, a_x_ptr, b_x_ptr, dbdx_ptr, scratch, zeta_y, zeta_x, out,
            n_steps, first_recorded_step, n_receivers, pml_begin_y, pml_end_y, columns, columns_inside,
            columns_in_pml, rdy, rdy2, rdx, rdx2, NY, NX, BLOCK_Y, BLOCK_X,
        )  # fmt: skip


@triton.jit
def _simulate_shot(
    v2dt2, source_terms, source_index, receiver_index, receivers, receiver_mask,
    a_y_ptr, b_y_ptr, dbdy_ptr, a_x_ptr, b_x_ptr, dbdx_ptr, scratch, zeta_y, zeta_x, out,
    n_steps, first_recorded_step, n_receivers, pml_begin_y, pml_end_y, columns, columns_inside,
    columns_in_pml, rdy, rdy2, rdx, rdx2,
    NY: tl.constexpr, NX: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
):  # fmt: skip
    """One shot's time loop on the program's fields in `scratch`, from rest."""
    # The fields start at zero: clear what the program's last shot left (all N_FIELDS),
    # after every thread has done with it.
    field = NY * NX
    tl.debug_barrier()
    zeros = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
    for row0 in range(0, NY, BLOCK_Y):
        rows = row0 + tl.arange(0, BLOCK_Y)[:, None]
        index = rows * NX + columns
        in_grid = (rows < NY) & (columns < NX)
        for f in tl.static_range(8):  # 8 = N_FIELDS
            tl.store(scratch + f * field + index, zeros, mask=in_grid)
    tl.debug_barrier()

    # The last step's update would only feed a sample that is never recorded: skip it.
    for step in range(0, n_steps - 1):
        parity = step % 2
        u = scratch + parity * field  # u^t
        u_other = scratch + (1 - parity) * field  # u^{t-1} on entry, u^{t+1} on exit
        psi_y = scratch + (2 + parity) * field
        psi_y_new = scratch + (3 - parity) * field
        psi_x = scratch + (4 + parity) * field
        psi_x_new = scratch + (5 - parity) * field
        if step >= first_recorded_step:
            _record(u, out + (step - first_recorded_step) * n_receivers, receiver_index, receivers, receiver_mask)
        source_term = tl.load(source_terms + step)
        for row0 in range(0, NY, BLOCK_Y):
            rows = row0 + tl.arange(0, BLOCK_Y)[:, None]
            rows_inside = (rows >= 2) & (rows < NY - 2)
            rows_in_pml = rows_inside & ((rows < pml_begin_y) | (rows >= pml_end_y))
            inside = rows_inside & columns_inside
            index = rows * NX + columns
            centre = tl.load(u + index, mask=inside, other=0.0)
            w_sum = _axis_term(
                u, psi_y, psi_y_new, zeta_y, a_y_ptr, b_y_ptr, dbdy_ptr,
                index, NX, rows, inside, rows_in_pml, centre, rdy, rdy2,
            )  # fmt: skip
            w_sum += _axis_term(
                u, psi_x, psi_x_new, zeta_x, a_x_ptr, b_x_ptr, dbdx_ptr,
                index, 1, columns, inside, columns_in_pml, centre, rdx, rdx2,
            )  # fmt: skip
            previous = tl.load(u_other + index, mask=inside, other=0.0)
            v2 = tl.load(v2dt2 + index, mask=inside, other=0.0)
            new = v2 * w_sum + 2 * centre - previous
            new = tl.where(index == source_index, new + source_term, new)
            tl.store(u_other + index, new, mask=inside)
        # Every thread's stores of this step must be visible before any thread's next loads.
        tl.debug_barrier()

    last = n_steps - 1
    if last >= first_recorded_step:
        _record(scratch + (last % 2) * field, out + (last - first_recorded_step) * n_receivers,
                receiver_index, receivers, receiver_mask)  # fmt: skip


# ---------------------------------------------------------------- entry points

# Whether the kernel was built for Triton's interpreter (TRITON_INTERPRET=1 when this
# module was imported): then it runs on CPU tensors, and only then.
INTERPRETED = isinstance(_shot_kernel, InterpretedFunction)
# Rows per tile on a GPU (a tile is ROWS_PER_TILE x next_power_of_2(NX) cells), warps
# per program and programs per multiprocessor (each loops over shots on its own fields, so
# that the fields of all programs at once can stay in L2). The first two are the best of the
# one-program-per-shot design's sweep on the H100, the third a first guess (3x deepwave
# with these; other shapes not yet timed: forward_modelling.py --fused-tiles).
ROWS_PER_TILE = 16
NUM_WARPS = 8
PROGRAMS_PER_SM = 2


@functools.cache
def multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_device(device: torch.device) -> None:
    """Raise ValueError unless the kernel can run on `device` (CUDA, or the interpreter)."""
    if device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"the fused backend is a Triton GPU kernel and needs a CUDA tensor, got one on {device}; "
            "on the CPU use backend='deepwave' (the same scheme and data). "
            "(Tests run the kernel on the CPU through Triton's interpreter: TRITON_INTERPRET=1 "
            "set before wavediffusion.physics.fused is imported.)"
        )


def model_terms(
    velocity: torch.Tensor, setup: FusedSetup, acquisition: Acquisition
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the kernel needs of a batch of models: v^2 dt^2 on deepwave's padded grid
    (replicated edges), (B, NY, NX), and each shot's source term, (B*S, n_steps), both in
    deepwave's operation order and contiguous float32."""
    dt = acquisition.dt
    padded = torch.nn.functional.pad(velocity, (setup.pad,) * 4, mode="replicate")[:, 0]  # (B, NY, NX)
    v2dt2 = (padded * padded * dt**2).contiguous()
    # deepwave scales each source by -v^2 dt^2 at its cell (deepwave/scalar.py).
    v_source = padded[:, setup.source_rows, setup.source_columns].reshape(-1, 1)  # (B*S, 1)
    source_term = (-setup.wavelet[None, :] * v_source**2 * dt**2).contiguous()  # (B*S, n_steps)
    return v2dt2, source_term


def simulate(
    velocity: torch.Tensor,
    acquisition: Acquisition,
    source_scale: float,
    delay_samples: int,
    rows_per_tile: int | None = None,
    programs: int | None = None,
) -> torch.Tensor:
    """Shot gathers of deepwave's scheme, calibrated as the deepwave backend's.

    velocity: (B, 1, nz, nx) float32 m/s, on CUDA (or the CPU under the interpreter).
    source_scale, delay_samples: forward.py's DEEPWAVE_SOURCE_SCALE and
    DEEPWAVE_DELAY_SAMPLES. rows_per_tile: rows of the padded grid per tile (default:
    ROWS_PER_TILE on a GPU, the whole grid under the interpreter). programs: Triton
    programs, each simulating every programs-th shot on its own fields (default:
    PROGRAMS_PER_SM per multiprocessor on a GPU, 2 under the interpreter), at most one a shot.
    Returns (B, S, nt, R) float32 on the velocity's device.
    """
    check_device(velocity.device)
    acq = acquisition
    setup = prepare(acq, velocity.device, float(source_scale), int(delay_samples))
    n_models, n_per_model, n_receivers = velocity.shape[0], acq.n_shots, acq.n_receivers
    n_shots = n_models * n_per_model
    out = velocity.new_empty(n_shots, acq.nt, n_receivers)  # (B*S, nt, R), model-major
    if n_shots == 0:
        return out.reshape(n_models, n_per_model, acq.nt, n_receivers)

    v2dt2, source_term = model_terms(velocity, setup, acq)
    if rows_per_tile is None:
        rows_per_tile = triton.next_power_of_2(setup.ny) if INTERPRETED else ROWS_PER_TILE
    if programs is None:
        programs = 2 if INTERPRETED else PROGRAMS_PER_SM * multiprocessors(velocity.device)
    programs = min(programs, n_shots)
    scratch = velocity.new_empty(programs, N_FIELDS, setup.ny, setup.nx)  # zeroed by the kernel
    _shot_kernel[(programs,)](
        v2dt2, source_term, setup.source_index, setup.receiver_index,
        setup.a_y, setup.b_y, setup.dbdy, setup.a_x, setup.b_x, setup.dbdx,
        scratch, out,
        n_shots, setup.n_steps, setup.first_recorded_step, n_receivers,
        setup.pml_begin_y, setup.pml_end_y, setup.pml_begin_x, setup.pml_end_x,
        1.0 / acq.dx, 1.0 / acq.dx**2, 1.0 / acq.dx, 1.0 / acq.dx**2,
        NY=setup.ny, NX=setup.nx, SHOTS_PER_MODEL=n_per_model,
        BLOCK_Y=rows_per_tile, BLOCK_X=triton.next_power_of_2(setup.nx),
        BLOCK_R=triton.next_power_of_2(n_receivers),
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out.reshape(n_models, n_per_model, acq.nt, n_receivers)
