"""The "fused-cuda" forward-modelling backend: deepwave's scalar scheme as one CUDA kernel
whose wavefields live in shared memory for all time steps.

The same scheme, setup and calibration as the "fused" (Triton) backend, whose
:func:`~.fused.prepare` it uses; what differs is where the fields are. Triton leaves
shared memory to its compiler, so the "fused" kernel keeps a shot's fields in global
memory and they travel through the caches at every step (2x deepwave measured on an
H100). Here one thread block simulates one shot with every field it reads at its
neighbours in shared memory (194 KB for OpenFWI's 114 x 114 padded grid):

- shared: the wavefield u^t (one copy), psi and zeta of each axis only on that axis'
  PML strips and the two cells of stencil reach beside them (psi in two copies: a cell's
  update reads its neighbours' old psi);
- registers: each cell's u^{t-1}, which only the cell itself reads;
- global memory (read-only, through the caches): v^2 dt^2. In registers too it made the
  compiler spill 140 bytes per thread (for sm_90 at 1024 threads; 4 bytes as it is).

Every step computes every cell's u^{t+1} into the register that held its u^{t-1}, waits at
a barrier, swaps it with u^t in shared memory, and waits again. Compiled at first use
with NVRTC (torch ships it; no CUDA toolkit needed) for the GPU at hand; CUDA only, there
is no CPU path (the tests run its source as C++ on the CPU). Design, tests and speed
(7.4x deepwave on an H100): docs/physics.md, "The fused backend".
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import fused
from .acquisition import Acquisition

# Threads per block: each handles ceil(cells / THREADS) cells of the padded grid (13 at
# 1024 for OpenFWI), their u^{t-1} in registers.
THREADS = 1024

SOURCE = r"""
// Compile-time geometry, defined above this by kernel_source(): NY, NX, STRIP,
// SHOTS_PER_MODEL, N_RECEIVERS, THREADS.
#define N_CELLS (NY * NX)
#define CELLS_PER_THREAD ((N_CELLS + THREADS - 1) / THREADS)
#define PML_BEGIN (STRIP - 2)           // cells [2, PML_BEGIN) and [N - PML_BEGIN, N - 2) take the PML update
#define STRIP_ROWS (2 * STRIP)          // y strips: rows [0, STRIP) and [NY - STRIP, NY)
#define STRIP_COLUMNS (2 * STRIP)       // x strips: columns [0, STRIP) and [NX - STRIP, NX)
#define Y_STRIP_CELLS (STRIP_ROWS * NX)
#define X_STRIP_CELLS (NY * STRIP_COLUMNS)

__device__ __forceinline__ int strip_row(int r) { return r < STRIP ? r : r - (NY - 2 * STRIP); }
__device__ __forceinline__ int strip_column(int c) { return c < STRIP ? c : c - (NX - 2 * STRIP); }

// One axis' share of deepwave's forward_cell (deepwave/scalar_kernels.h), as fused.py's
// _axis_term: the 4th-order second difference d2 outside the axis' PML; inside it
// (1 + b) tmp + a zeta with tmp = (1 + b) d2 + db d1 + D1(a psi), storing
// psi_new = b d1 + a psi and zeta = b tmp + a zeta. `at(k)` is the strip index of the
// cell k cells along the axis, `stride` one cell along it on the full grid.
#define AXIS_TERM(RESULT, U, CELL, STRIDE, POS, IN_PML, A, B, DB, PSI, PSI_NEW, ZETA, AT, RD, RD2) { \
    const float centre = U[CELL];                                                   \
    const float u_p1 = U[CELL + STRIDE], u_m1 = U[CELL - STRIDE];                   \
    const float u_p2 = U[CELL + 2 * STRIDE], u_m2 = U[CELL - 2 * STRIDE];           \
    const float d2 = ((4.0f / 3.0f) * ((u_p1 - centre) + (u_m1 - centre))          \
                      + (-1.0f / 12.0f) * ((u_p2 - centre) + (u_m2 - centre))) * RD2; \
    if (!(IN_PML)) {                                                                \
        RESULT = d2;                                                                \
    } else {                                                                        \
        const float d1 = ((8.0f / 12.0f) * (u_p1 - u_m1) + (-1.0f / 12.0f) * (u_p2 - u_m2)) * RD; \
        const float a = A[POS], b = B[POS], db = DB[POS];                           \
        const float apsi_p1 = A[POS + 1] * PSI[AT(1)], apsi_m1 = A[POS - 1] * PSI[AT(-1)]; \
        const float apsi_p2 = A[POS + 2] * PSI[AT(2)], apsi_m2 = A[POS - 2] * PSI[AT(-2)]; \
        const float d1_apsi = ((8.0f / 12.0f) * (apsi_p1 - apsi_m1) + (-1.0f / 12.0f) * (apsi_p2 - apsi_m2)) * RD; \
        const float tmp = (1 + b) * d2 + db * d1 + d1_apsi;                         \
        const float zeta = ZETA[AT(0)];                                             \
        PSI_NEW[AT(0)] = b * d1 + a * PSI[AT(0)];                                   \
        ZETA[AT(0)] = b * tmp + a * zeta;                                           \
        RESULT = (1 + b) * tmp + a * zeta;                                          \
    }                                                                               \
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) fused_shots(
    const float* __restrict__ v2dt2,        // (models, NY, NX): v^2 dt^2 on the padded grid
    const float* __restrict__ source_term,  // (shots, n_steps): added at the source cell
    const int* __restrict__ source_index,   // (SHOTS_PER_MODEL,): flat source cell of each shot
    const int* __restrict__ receiver_index, // (N_RECEIVERS,): flat receiver cells
    const float* __restrict__ a_y, const float* __restrict__ b_y, const float* __restrict__ dbdy,
    const float* __restrict__ a_x, const float* __restrict__ b_x, const float* __restrict__ dbdx,
    float* __restrict__ out,                // (shots, n_steps - first_recorded_step, N_RECEIVERS)
    int n_steps, int first_recorded_step, double rdy_, double rdy2_, double rdx_, double rdx2_)
{
    extern __shared__ float shared[];
    float* u = shared;                               // u^t, N_CELLS
    float* psi_y0 = u + N_CELLS;                     // psi_y, two copies, Y_STRIP_CELLS each
    float* psi_y1 = psi_y0 + Y_STRIP_CELLS;
    float* zeta_y = psi_y1 + Y_STRIP_CELLS;
    float* psi_x0 = zeta_y + Y_STRIP_CELLS;          // psi_x, two copies, X_STRIP_CELLS each
    float* psi_x1 = psi_x0 + X_STRIP_CELLS;
    float* zeta_x = psi_x1 + X_STRIP_CELLS;
    const int n_shared = N_CELLS + 3 * Y_STRIP_CELLS + 3 * X_STRIP_CELLS;
    const float rdy = (float)rdy_, rdy2 = (float)rdy2_, rdx = (float)rdx_, rdx2 = (float)rdx2_;

    const long long shot = blockIdx.x;
    const float* v2 = v2dt2 + (shot / SHOTS_PER_MODEL) * N_CELLS;
    const int source = source_index[shot % SHOTS_PER_MODEL];
    const float* terms = source_term + shot * n_steps;
    float* traces = out + shot * (long long)(n_steps - first_recorded_step) * N_RECEIVERS;
    const int receiver = threadIdx.x < N_RECEIVERS ? receiver_index[threadIdx.x] : 0;

    for (int i = threadIdx.x; i < n_shared; i += THREADS) shared[i] = 0.0f;
    // Per cell of this thread: u^{t-1}, which the update replaces by u^{t+1} until the
    // barrier, after which it swaps with u^t in shared memory.
    float u_own[CELLS_PER_THREAD];
#pragma unroll
    for (int k = 0; k < CELLS_PER_THREAD; ++k) u_own[k] = 0.0f;
    __syncthreads();

    // The last step's update would only feed a sample that is never recorded: skip it.
    for (int step = 0; step < n_steps - 1; ++step) {
        const float* psi_y = (step & 1) ? psi_y1 : psi_y0;
        float* psi_y_new = (step & 1) ? psi_y0 : psi_y1;
        const float* psi_x = (step & 1) ? psi_x1 : psi_x0;
        float* psi_x_new = (step & 1) ? psi_x0 : psi_x1;
        if (step >= first_recorded_step && threadIdx.x < N_RECEIVERS)
            traces[(step - first_recorded_step) * N_RECEIVERS + threadIdx.x] = u[receiver];
        const float source_now = terms[step];
#pragma unroll
        for (int k = 0; k < CELLS_PER_THREAD; ++k) {
            const int cell = threadIdx.x + k * THREADS;
            const int r = cell / NX, c = cell % NX;
            if (cell >= N_CELLS || r < 2 || r >= NY - 2 || c < 2 || c >= NX - 2) continue;  // stays 0
            float w_y, w_x;
#define AT_Y(k_) (strip_row(r + (k_)) * NX + c)
#define AT_X(k_) (r * STRIP_COLUMNS + strip_column(c + (k_)))
            AXIS_TERM(w_y, u, cell, NX, r, (r < PML_BEGIN || r >= NY - PML_BEGIN), a_y, b_y, dbdy,
                      psi_y, psi_y_new, zeta_y, AT_Y, rdy, rdy2)
            AXIS_TERM(w_x, u, cell, 1, c, (c < PML_BEGIN || c >= NX - PML_BEGIN), a_x, b_x, dbdx,
                      psi_x, psi_x_new, zeta_x, AT_X, rdx, rdx2)
            float next = __ldg(v2 + cell) * (w_y + w_x) + 2 * u[cell] - u_own[k];
            if (cell == source) next += source_now;
            u_own[k] = next;
        }
        __syncthreads();  // every read of u^t is done
#pragma unroll
        for (int k = 0; k < CELLS_PER_THREAD; ++k) {
            const int cell = threadIdx.x + k * THREADS;
            if (cell < N_CELLS) {  // u^{t+1} into shared memory, u^t (next step's u^{t-1}) kept
                const float current = u[cell];
                u[cell] = u_own[k];
                u_own[k] = current;
            }
        }
        __syncthreads();  // u^{t+1} and the new psi are seen by every thread
    }
    const int last = n_steps - 1;
    if (last >= first_recorded_step && threadIdx.x < N_RECEIVERS)
        traces[(last - first_recorded_step) * N_RECEIVERS + threadIdx.x] = u[receiver];
}
"""


def strip_width(setup: fused.FusedSetup) -> int:
    """Cells of each side's strip: the PML update region and the two cells of stencil reach
    beside it (the kernel's STRIP), the same on every side."""
    strip = setup.pml_begin_y + fused.FD_PAD
    if setup.pml_begin_x + fused.FD_PAD != strip or setup.ny - setup.pml_end_y != setup.pml_begin_y:
        raise ValueError("the fused-cuda kernel assumes the same PML width on every side")
    return strip


def shared_bytes(setup: fused.FusedSetup) -> int:
    """Shared memory of one block: u, and psi (x2) and zeta on each axis' strips."""
    strip = strip_width(setup)
    return 4 * (setup.ny * setup.nx + 3 * 2 * strip * setup.nx + 3 * setup.ny * 2 * strip)


def kernel_source(setup: fused.FusedSetup, shots_per_model: int, n_receivers: int, threads: int) -> str:
    """The kernel's CUDA source with the geometry as macros (its loops unroll over them)."""
    strip = strip_width(setup)
    macros = {"NY": setup.ny, "NX": setup.nx, "STRIP": strip, "SHOTS_PER_MODEL": shots_per_model,
              "N_RECEIVERS": n_receivers, "THREADS": threads}  # fmt: skip
    return "".join(f"#define {name} {value}\n" for name, value in macros.items()) + SOURCE


@functools.cache
def _kernel(device_index: int, source: str, shared: int):
    """The kernel compiled for one GPU, its shared memory limit raised to `shared` bytes."""
    from torch.cuda import _compile_kernel  # NVRTC through torch (private; torch >= 2.8)

    major, minor = torch.cuda.get_device_capability(device_index)
    with torch.cuda.device(device_index):
        kernel = _compile_kernel(source, "fused_shots", compute_capability=f"{major}{minor}")
        if hasattr(kernel, "set_shared_memory_config"):
            kernel.set_shared_memory_config(shared)
        else:  # older torch: set the attribute through the driver
            libcuda = torch.cuda._utils._get_gpu_runtime_library()
            max_dynamic_shared_memory = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            status = libcuda.cuFuncSetAttribute(kernel.func, max_dynamic_shared_memory, ctypes.c_int(shared))
            if status != 0:
                raise RuntimeError(f"cuFuncSetAttribute failed ({status}): {shared} bytes of shared memory")
    return kernel


def check_device(device: torch.device) -> None:
    """Raise ValueError unless `device` is a CUDA device."""
    if device.type != "cuda":
        raise ValueError(
            f"the fused-cuda backend is a CUDA kernel and needs a CUDA tensor, got one on {device}; "
            "on the CPU use backend='deepwave' (the same scheme and data)"
        )


def simulate(
    velocity: torch.Tensor, acquisition: Acquisition, source_scale: float, delay_samples: int
) -> torch.Tensor:
    """Shot gathers of deepwave's scheme, calibrated as the deepwave backend's.

    velocity: (B, 1, nz, nx) float32 m/s on CUDA; source_scale, delay_samples as for
    :func:`.fused.simulate`. Returns (B, S, nt, R) float32 on the velocity's device.
    """
    check_device(velocity.device)
    acq = acquisition
    setup = fused.prepare(acq, velocity.device, float(source_scale), int(delay_samples))
    n_models, n_per_model, n_receivers = velocity.shape[0], acq.n_shots, acq.n_receivers
    n_shots = n_models * n_per_model
    out = velocity.new_empty(n_shots, acq.nt, n_receivers)
    if n_shots == 0:
        return out.reshape(n_models, n_per_model, acq.nt, n_receivers)
    v2dt2, source_term = fused.model_terms(velocity, setup, acq)
    shared = shared_bytes(setup)
    device_index = velocity.device.index if velocity.device.index is not None else torch.cuda.current_device()
    kernel = _kernel(device_index, kernel_source(setup, n_per_model, n_receivers, THREADS), shared)
    with torch.cuda.device(device_index):  # the launch goes to the current device's stream
        kernel(
            grid=(n_shots, 1, 1), block=(THREADS, 1, 1), shared_mem=shared,
            args=[v2dt2, source_term, setup.source_index, setup.receiver_index,
                  setup.a_y, setup.b_y, setup.dbdy, setup.a_x, setup.b_x, setup.dbdx, out,
                  setup.n_steps, setup.first_recorded_step,
                  1.0 / acq.dx, 1.0 / acq.dx**2, 1.0 / acq.dx, 1.0 / acq.dx**2],
        )  # fmt: skip
    return out.reshape(n_models, n_per_model, acq.nt, n_receivers)
