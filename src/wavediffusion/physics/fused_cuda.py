"""The "fused-cuda" forward-modelling backend: deepwave's scalar scheme as one CUDA kernel
whose wavefields live in shared memory for all time steps.

The same scheme, setup and calibration as the "fused" (Triton) backend, whose
:func:`~.fused.prepare` it uses; what differs is where the fields are. Triton leaves
shared memory to its compiler, so the "fused" kernel keeps a shot's fields in global
memory and they travel through the caches at every step (2-3x deepwave measured on an
H100). Here one thread block simulates one shot with every field it reads at its
neighbours in shared memory (196 KB for OpenFWI's 114 x 114 padded grid):

- shared: the wavefield u^t (one copy); q = a psi (two copies: a cell's update reads its
  neighbours' old q) and zeta of each axis only on that axis' PML strips and the two
  cells of stencil reach beside them; the y-PML coefficients of each row;
- registers: each cell's u^{t-1}, which only the cell itself reads, and the x-PML
  coefficients of the thread's column;
- global memory (read-only, through the caches): v^2 dt^2.

A thread owns a run of cells in one column (OpenFWI: 128 column lanes x 8 groups of 14
rows), so a warp's 32 threads hold neighbouring columns of the same rows: whether a row is
in the y-PML is the same for the whole warp, whether a column is in the x-PML is fixed per
thread, and u^t walks down the column through registers. Every step computes each
owned cell's u^{t+1} into the register that held its u^{t-1}, waits at a barrier, swaps it
with u^t in shared memory, and waits again. Compiled at first use with NVRTC (torch ships
it; no CUDA toolkit needed) for the GPU at hand; CUDA only, there is no CPU path (the
tests run its source as C++ on the CPU). Design, tests and speed: docs/physics.md, "The
fused backend".
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import fused
from .acquisition import Acquisition

# Most threads a block may have (CUDA's limit); each owns a run of one column's cells, their
# u^{t-1} in registers (OpenFWI: 128 column lanes x 8 groups of 14 rows).
MAX_THREADS = 1024

SOURCE = r"""
// Compile-time geometry, defined above this by kernel_source(): NY, NX, STRIP,
// SHOTS_PER_MODEL, N_RECEIVERS, COLUMN_LANES, ROWS_PER_THREAD, THREADS.
#define N_CELLS (NY * NX)
#define PML_BEGIN (STRIP - 2)           // cells [2, PML_BEGIN) and [N - PML_BEGIN, N - 2) take the PML update
#define STRIP_ROWS (2 * STRIP)          // y strips: rows [0, STRIP) and [NY - STRIP, NY)
#define STRIP_COLUMNS (2 * STRIP)       // x strips: columns [0, STRIP) and [NX - STRIP, NX)
#define Y_STRIP_CELLS (STRIP_ROWS * NX)
#define X_STRIP_CELLS (NY * STRIP_COLUMNS)
// 4th-order first (D1_*) and second (D2_*) differences: weights of the +-1 and +-2 neighbours
#define D1_1 (8.0f / 12.0f)
#define D1_2 (-1.0f / 12.0f)
#define D2_1 (4.0f / 3.0f)
#define D2_2 (-1.0f / 12.0f)

__device__ __forceinline__ bool in_pml(int k, int n) { return k < PML_BEGIN || k >= n - PML_BEGIN; }
// Index in an axis' strips of cell k along it (k within STRIP of either edge).
__device__ __forceinline__ int strip_index(int k, int n) { return k < STRIP ? k : k - (n - 2 * STRIP); }

__device__ __forceinline__ float second_difference(float m2, float m1, float centre, float p1, float p2, float rd2) {
    return (D2_1 * ((p1 - centre) + (m1 - centre)) + D2_2 * ((p2 - centre) + (m2 - centre))) * rd2;
}
__device__ __forceinline__ float first_difference(float m2, float m1, float p1, float p2, float rd) {
    return (D1_1 * (p1 - m1) + D1_2 * (p2 - m2)) * rd;
}

// One axis' share of deepwave's forward_cell (deepwave/scalar_kernels.h) inside its PML,
// with q = a psi kept in place of psi (so D1(a psi) = D1(q) needs no neighbour's a):
//   tmp = (1 + b) d2 + db d1 + D1(q),  q_new = a (b d1 + q),  zeta_new = b tmp + a zeta,
// and the term (1 + b) tmp + a zeta = tmp + zeta_new. Outside the PML the term is d2.
// q_m2 .. q_p2: q^t at the cell and its neighbours along the axis.
__device__ __forceinline__ float pml_term(float d2, float d1, float q_m2, float q_m1, float q_0, float q_p1,
                                          float q_p2, float* q_new, float* zeta, float rd, float a, float b,
                                          float db) {
    const float tmp = (1.0f + b) * d2 + db * d1 + first_difference(q_m2, q_m1, q_p1, q_p2, rd);
    const float zeta_new = b * tmp + a * *zeta;
    *q_new = a * (b * d1 + q_0);
    *zeta = zeta_new;
    return tmp + zeta_new;
}

// One block per shot. Thread (lane, group) owns the cells of column 2 + lane in rows
// first_row = 2 + group ROWS_PER_THREAD, ...: a warp holds 32 neighbouring columns of the
// same rows, so the y-PML test is the same for all its threads and the x-PML test is fixed
// per thread, and u^t of the column walks down through registers (one shared-memory read
// per cell for the y derivatives). (q_y walking down too measured ~10 % slower on an H100:
// tracking it costs every row, where only the y-PML rows need it.)
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
    extern __shared__ float4 shared[];
    float4* y_coefficients = shared;                 // (a, b, db/dy, 0) of each row: NY
    float* u = (float*)(shared + NY);                // u^t, N_CELLS
    float* q_y0 = u + N_CELLS;                       // q_y = a_y psi_y, two copies, Y_STRIP_CELLS each
    float* q_y1 = q_y0 + Y_STRIP_CELLS;
    float* zeta_y = q_y1 + Y_STRIP_CELLS;
    float* q_x0 = zeta_y + Y_STRIP_CELLS;            // q_x = a_x psi_x, two copies, X_STRIP_CELLS each
    float* q_x1 = q_x0 + X_STRIP_CELLS;
    float* zeta_x_strips = q_x1 + X_STRIP_CELLS;
    const int n_fields = N_CELLS + 3 * Y_STRIP_CELLS + 3 * X_STRIP_CELLS;
    const float rdy = (float)rdy_, rdy2 = (float)rdy2_, rdx = (float)rdx_, rdx2 = (float)rdx2_;

    const long long shot = blockIdx.x;
    const int source = source_index[shot % SHOTS_PER_MODEL];
    const float* terms = source_term + shot * n_steps;
    float* traces = out + shot * (long long)(n_steps - first_recorded_step) * N_RECEIVERS;
    const int receiver = threadIdx.x < N_RECEIVERS ? receiver_index[threadIdx.x] : 0;

#pragma unroll 1
    for (int i = threadIdx.x; i < n_fields; i += THREADS) u[i] = 0.0f;
#pragma unroll 1
    for (int i = threadIdx.x; i < NY; i += THREADS) y_coefficients[i] = make_float4(a_y[i], b_y[i], dbdy[i], 0.0f);

    const int column = 2 + threadIdx.x % COLUMN_LANES;
    const int first_row = 2 + (threadIdx.x / COLUMN_LANES) * ROWS_PER_THREAD;
    const int first_cell = first_row * NX + column;
    const bool has_column = column < NX - 2;
    const bool column_in_pml = has_column && in_pml(column, NX);
    const int first_x_strip_cell = first_row * STRIP_COLUMNS + strip_index(column, NX);
    const float* v2_column = v2dt2 + (shot / SHOTS_PER_MODEL) * N_CELLS + first_cell;
    const int source_offset = source - first_cell;  // the source is row i of this thread when i NX equals it
    float* u_column = u + first_cell;
    float* zeta_x = zeta_x_strips + first_x_strip_cell;  // this thread's column
    float ax = 0.0f, bx = 0.0f, dbx = 0.0f;
    if (column_in_pml) ax = a_x[column], bx = b_x[column], dbx = dbdx[column];
    // u^{t-1} of this thread's cells, which the update replaces by u^{t+1} until the
    // barrier, after which it swaps with u^t in shared memory.
    float u_own[ROWS_PER_THREAD];
#pragma unroll
    for (int i = 0; i < ROWS_PER_THREAD; ++i) u_own[i] = 0.0f;
    __syncthreads();

    // The last step's update would only feed a sample that is never recorded: skip it.
    for (int step = 0; step < n_steps - 1; ++step) {
        const float* q_y = (step & 1) ? q_y1 : q_y0;
        float* q_y_new = (step & 1) ? q_y0 : q_y1;
        const float* q_x = ((step & 1) ? q_x1 : q_x0) + first_x_strip_cell;  // this thread's column
        float* q_x_new = ((step & 1) ? q_x0 : q_x1) + first_x_strip_cell;
        if (step >= first_recorded_step && threadIdx.x < N_RECEIVERS)
            traces[(step - first_recorded_step) * N_RECEIVERS + threadIdx.x] = u[receiver];
        const float source_now = terms[step];
        if (has_column) {
            // u^t at rows row - 2 .. row + 2 of this column, moved down a row per cell
            float u_m2 = u_column[-2 * NX], u_m1 = u_column[-NX], u_0 = u_column[0], u_p1 = u_column[NX];
#pragma unroll
            for (int i = 0; i < ROWS_PER_THREAD; ++i) {
                const int row = first_row + i;
                if (row >= NY - 2) break;  // the last group's rows end early; the same in a warp
                const float* at = u_column + i * NX;
                const float u_p2 = at[2 * NX];
                const float u_l2 = at[-2], u_l1 = at[-1], u_r1 = at[1], u_r2 = at[2];
                float w_y = second_difference(u_m2, u_m1, u_0, u_p1, u_p2, rdy2);
                float w_x = second_difference(u_l2, u_l1, u_0, u_r1, u_r2, rdx2);
                if (in_pml(row, NY)) {
                    const int s = strip_index(row, NY) * NX + column;
                    const float4 k = y_coefficients[row];
                    w_y = pml_term(w_y, first_difference(u_m2, u_m1, u_p1, u_p2, rdy), q_y[s - 2 * NX], q_y[s - NX],
                                   q_y[s], q_y[s + NX], q_y[s + 2 * NX], q_y_new + s, zeta_y + s, rdy, k.x, k.y, k.z);
                }
                if (column_in_pml) {
                    const int s = i * STRIP_COLUMNS;
                    w_x = pml_term(w_x, first_difference(u_l2, u_l1, u_r1, u_r2, rdx), q_x[s - 2], q_x[s - 1],
                                   q_x[s], q_x[s + 1], q_x[s + 2], q_x_new + s, zeta_x + s, rdx, ax, bx,
                                   dbx);
                }
                float next = __ldg(v2_column + i * NX) * (w_y + w_x) + 2 * u_0 - u_own[i];
                if (i * NX == source_offset) next += source_now;
                u_own[i] = next;
                u_m2 = u_m1, u_m1 = u_0, u_0 = u_p1, u_p1 = u_p2;
            }
        }
        __syncthreads();  // every read of u^t is done
        if (has_column) {
#pragma unroll
            for (int i = 0; i < ROWS_PER_THREAD; ++i) {
                if (first_row + i < NY - 2) {  // u^{t+1} into shared memory, u^t (next step's u^{t-1}) kept
                    const float current = u_column[i * NX];
                    u_column[i * NX] = u_own[i];
                    u_own[i] = current;
                }
            }
        }
        __syncthreads();  // u^{t+1} and the new q are seen by every thread
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
    """Shared memory of one block: the y-PML coefficients of each row (four floats), u, and
    q (x2) and zeta on each axis' strips."""
    strip = strip_width(setup)
    return 4 * (4 * setup.ny + setup.ny * setup.nx + 3 * 2 * strip * setup.nx + 3 * setup.ny * 2 * strip)


def block_shape(setup: fused.FusedSetup, n_receivers: int) -> tuple[int, int, int]:
    """(column lanes, rows per thread, threads) of one block: a lane per updated column,
    rounded up to whole warps, and the updated rows split over as many groups of lanes as
    MAX_THREADS allows."""
    columns, rows = setup.nx - 2 * fused.FD_PAD, setup.ny - 2 * fused.FD_PAD
    column_lanes = -(-columns // 32) * 32
    if column_lanes > MAX_THREADS:
        raise ValueError(f"the fused-cuda kernel updates at most {MAX_THREADS} columns (the padded grid less "
                         f"{2 * fused.FD_PAD}), got {columns}: use backend='deepwave'")
    rows_per_thread = -(-rows // (MAX_THREADS // column_lanes))
    threads = column_lanes * -(-rows // rows_per_thread)
    if n_receivers > threads:
        raise ValueError(f"the fused-cuda kernel records at most {threads} receivers here, got {n_receivers}")
    return column_lanes, rows_per_thread, threads


def kernel_source(setup: fused.FusedSetup, shots_per_model: int, n_receivers: int) -> str:
    """The kernel's CUDA source with the geometry as macros (its loops unroll over them)."""
    column_lanes, rows_per_thread, threads = block_shape(setup, n_receivers)
    macros = {"NY": setup.ny, "NX": setup.nx, "STRIP": strip_width(setup), "SHOTS_PER_MODEL": shots_per_model,
              "N_RECEIVERS": n_receivers, "COLUMN_LANES": column_lanes, "ROWS_PER_THREAD": rows_per_thread,
              "THREADS": threads}  # fmt: skip
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
    threads = block_shape(setup, n_receivers)[2]
    kernel = _kernel(device_index, kernel_source(setup, n_per_model, n_receivers), shared)
    with torch.cuda.device(device_index):  # the launch goes to the current device's stream
        kernel(
            grid=(n_shots, 1, 1), block=(threads, 1, 1), shared_mem=shared,
            args=[v2dt2, source_term, setup.source_index, setup.receiver_index,
                  setup.a_y, setup.b_y, setup.dbdy, setup.a_x, setup.b_x, setup.dbdx, out,
                  setup.n_steps, setup.first_recorded_step,
                  1.0 / acq.dx, 1.0 / acq.dx**2, 1.0 / acq.dx, 1.0 / acq.dx**2],
        )  # fmt: skip
    return out.reshape(n_models, n_per_model, acq.nt, n_receivers)
