"""The fused forward backends (Triton: "fused"; CUDA: "fused-cuda") against the deepwave
backend they reproduce.

On the CPU the kernel runs through Triton's interpreter, in a subprocess started with
TRITON_INTERPRET=1: the variable must be set before the kernel is defined, and setting it
in this process would also turn every other Triton kernel of the test session (torch's
compiled ones included) into interpreted ones. The interpreter takes ~30 ms per time step
and shot, so these cases are short: OpenFWI's grid and receivers, two shots, 150 samples
(enough for the direct wave, first reflections and the PML to act). The CUDA kernel has
no CPU path for users; the tests compile it for the H100 (NVRTC needs no GPU) and run its
source as C++ on the CPU (CPU_HARNESS). The GPU tests run both kernels on OpenFWI's full
acquisition on the device machine.

The fused backend runs deepwave's scheme step for step, so the bound is float32 rounding:
per model relative L2 <= 1e-4 (measured: ~1e-6, see docs/physics.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wavediffusion
from wavediffusion.data.embedded import load_real_velocity
from wavediffusion.physics.acquisition import OPENFWI_ACQUISITION, Acquisition
from wavediffusion.physics.forward import forward_model

from conftest import REPO

# OpenFWI's grid, PML and receivers; two shots (one at the model's edge), a short record.
SHORT = dataclasses.replace(OPENFWI_ACQUISITION, nt=150, source_columns=(0, 52))
TOLERANCE = 1e-4  # per-model relative L2 against deepwave, float32

# Runs each (velocity, acquisition, rows_per_tile) of a file, interpreter on: through
# forward_model(..., "fused"), or, given rows_per_tile, fused.simulate with that tiling
# (forward_model does not expose it).
RUNNER = """
import sys
import torch
from wavediffusion.physics import fused
from wavediffusion.physics.acquisition import Acquisition
from wavediffusion.physics.forward import DEEPWAVE_DELAY_SAMPLES, DEEPWAVE_SOURCE_SCALE, forward_model

assert fused.INTERPRETED, "TRITON_INTERPRET=1 did not reach the kernel"
torch.set_num_threads(1)
outputs = []
for velocity, fields, rows in torch.load(sys.argv[1]):
    acquisition = Acquisition(**fields)
    outputs.append(forward_model(velocity, "fused", acquisition) if rows is None else
                   fused.simulate(velocity, acquisition, DEEPWAVE_SOURCE_SCALE, DEEPWAVE_DELAY_SAMPLES,
                                  rows_per_tile=rows))
torch.save(outputs, sys.argv[2])
"""


def _environment(interpret: bool) -> dict[str, str]:
    """This process' environment, this checkout's package first, the interpreter on or off."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    src = str(Path(wavediffusion.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else src
    env["OMP_NUM_THREADS"] = "1"
    return env


def fused_on_cpu(runs: list[tuple[torch.Tensor, Acquisition, int | None]], folder: Path) -> list[torch.Tensor]:
    """The fused data of each run (velocity (B, 1, nz, nx) m/s, acquisition, rows_per_tile),
    through Triton's interpreter in one subprocess. Returns the list of (B, S, nt, R).
    rows_per_tile: None for the interpreter's default (one tile, the whole grid).
    """
    inputs, outputs = folder / "fused_in.pt", folder / "fused_out.pt"
    torch.save([(v, dataclasses.asdict(acq), rows) for v, acq, rows in runs], inputs)
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(inputs), str(outputs)],
        env=_environment(interpret=True), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(outputs)


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per model ||a - b|| / ||b|| over (shots, time, receivers)."""
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).tolist()


def layered_map(acq: Acquisition) -> torch.Tensor:
    """Three layers, 1800 / 2900 / 4300 m/s, the lower interface dipping: (1, 1, nz, nx)."""
    rows = torch.arange(acq.nz, dtype=torch.float32)[:, None]
    columns = torch.arange(acq.nx, dtype=torch.float32)[None, :]
    velocity = torch.full((acq.nz, acq.nx), 1800.0)
    velocity[rows.expand(-1, acq.nx) >= 18] = 2900.0
    velocity[rows >= 40 + 0.2 * columns] = 4300.0
    return velocity[None, None]


def smooth_random_map(acq: Acquisition, seed: int = 0) -> torch.Tensor:
    """A smooth random map in [1500, 4500] m/s: (1, 1, nz, nx)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, 5, 5, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(acq.nz, acq.nx), mode="bicubic", align_corners=True)
    return (1500.0 + 3000.0 * fine).clamp(1500.0, 4500.0)


def real_maps() -> torch.Tensor:
    """The first test map of FlatVel-A and of CurveVel-A: (2, 1, 70, 70) m/s."""
    return torch.from_numpy(np.concatenate([load_real_velocity(f, "test")[:1] for f in ("FlatVel-A", "CurveVel-A")]))


# ------------------------------------------------------------------ CPU, Triton's interpreter


# One shot at the model's middle column: the tiled run is the slowest under the interpreter.
ONE_SHOT = dataclasses.replace(SHORT, source_columns=(52,))
TILE_ROWS = 16  # 114 padded rows: 7 x 16 + 2, a tile border (row 16) inside the top PML


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{case: (velocity, fused data)}, every CPU case through one interpreter subprocess
    (its start-up paid once; the interpreter takes ~30 ms per time step and shot):
    "maps" a batch of four (layered, smooth random, FlatVel-A, CurveVel-A), "alone" the
    last of them on its own, "tiles" that CurveVel-A map in TILE_ROWS-row tiles, one shot."""
    maps = torch.cat([layered_map(SHORT), smooth_random_map(SHORT), real_maps()])
    cases = {"maps": (maps, SHORT, None), "alone": (maps[3:], SHORT, None), "tiles": (maps[3:], ONE_SHOT, TILE_ROWS)}
    data = fused_on_cpu(list(cases.values()), tmp_path_factory.mktemp("fused"))
    return {name: (case[0], out) for (name, case), out in zip(cases.items(), data)}


def test_fused_matches_deepwave(interpreted):
    velocity, fused = interpreted["maps"]
    deep = forward_model(velocity, "deepwave", SHORT)
    assert fused.shape == deep.shape == (4, 2, SHORT.nt, 70) and fused.dtype == torch.float32
    errors = relative_l2(fused, deep)
    print(f"fused vs deepwave (layered, smooth, FlatVel-A, CurveVel-A), per-model relative L2: {errors}")
    assert max(errors) <= TOLERANCE, errors
    assert deep.abs().max() > 1.0  # the record holds the direct wave, not just noise


def test_models_of_a_batch_are_independent(interpreted):
    """A model's data do not depend on the other models of its batch, nor its place in it."""
    (_, together), (_, alone) = interpreted["maps"], interpreted["alone"]
    assert torch.equal(together[3], alone[0])
    # ... and the batch holds each model's own data: they differ from one another.
    assert min(relative_l2(together[:3], together[3:].expand(3, -1, -1, -1))) > 0.1


def test_row_tiles_give_deepwaves_data(interpreted):
    """The GPU's tiling (several row tiles per step, the last one partial) on the CPU.

    Under the interpreter a tile's loads all happen before its stores, so only a tile
    border can show a cell reading what another cell already overwrote in the same step.
    16-row tiles put a border (row 16) inside the top PML, next to the sources: updating
    psi in place instead of into its other copy gives 1.8e-3 here (checked), 7e-7 in one tile.
    """
    velocity, tiled = interpreted["tiles"]
    errors = relative_l2(tiled, forward_model(velocity, "deepwave", ONE_SHOT))
    print(f"fused in {TILE_ROWS}-row tiles vs deepwave, relative L2: {errors}")
    assert max(errors) <= TOLERANCE, errors


def test_fused_on_cpu_without_the_interpreter_says_to_use_deepwave():
    code = (
        "import torch\n"
        "from wavediffusion.physics.forward import forward_model\n"
        "try:\n"
        "    forward_model(torch.full((1, 1, 70, 70), 2000.0), 'fused')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=_environment(interpret=False),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "needs a CUDA tensor" in result.stdout and "backend='deepwave'" in result.stdout, result.stdout


def test_pml_profiles_are_deepwaves():
    """fused.cpml_profiles equals the profiles deepwave.scalar builds (its private helper)."""
    from deepwave import _regular_grid

    from wavediffusion.physics import fused

    acq = OPENFWI_ACQUISITION
    setup = fused.prepare(acq, torch.device("cpu"), -1.0, 1)
    theirs = _regular_grid.set_pml_profiles(
        [acq.pml_width] * 4, 4, [fused.FD_PAD] * 4, acq.dt, [acq.dx, acq.dx], acq.max_velocity,
        torch.float32, torch.device("cpu"), acq.peak_frequency, (setup.ny, setup.nx),
    )  # fmt: skip
    ours = (setup.a_y, setup.b_y, setup.dbdy, setup.a_x, setup.b_x, setup.dbdx)
    # Measured: a 6e-8, b 7e-8, db/dx 9e-7 of their maximum. deepwave rounds to float32
    # step by step, fused once; db/dx, a difference of neighbouring b, magnifies that.
    bounds = {"a": 1e-6, "b": 1e-6, "d": 1e-5}
    for name, mine, reference in zip(("a_y", "b_y", "dbdy", "a_x", "b_x", "dbdx"), ours, theirs):
        reference = reference.flatten()
        assert mine.shape == reference.shape, name
        assert (mine - reference).abs().max() <= bounds[name[0]] * reference.abs().max(), name
        assert reference.abs().max() > 0 and reference[setup.ny // 2] == 0, name  # a layer, and an interior


def test_kernel_compiles_for_the_h100():
    """The kernel as the GPU gets it compiles for sm_90, without a GPU (to PTX and cubin).

    The interpreter runs code the compiler may reject, so this is the CPU's check of the
    GPU build. Also: three barriers (around the clearing of a program's fields before each
    shot, and between steps), and no non-coherent loads (ld.global.nc
    could return a value cached before another thread of the program stored it).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from wavediffusion.physics import fused

    if fused.INTERPRETED:
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    setup = fused.prepare(OPENFWI_ACQUISITION, torch.device("cpu"), -1.0, 1)
    signature = {
        name: "*i32" if name in ("source_index_ptr", "receiver_index_ptr") else "*fp32"
        for name in fused._shot_kernel.arg_names
        if name.endswith("_ptr")
    }
    signature.update({name: "i32" for name in ("n_shots", "n_steps", "first_recorded_step", "n_receivers",
                                               "pml_begin_y", "pml_end_y", "pml_begin_x", "pml_end_x")})  # fmt: skip
    signature.update({name: "fp32" for name in ("rdy", "rdy2", "rdx", "rdx2")})
    constants = {"NY": setup.ny, "NX": setup.nx, "SHOTS_PER_MODEL": 5, "BLOCK_Y": fused.ROWS_PER_TILE,
                 "BLOCK_X": 128, "BLOCK_R": 128}  # fmt: skip
    signature.update({name: "constexpr" for name in constants})
    assert set(signature) == set(fused._shot_kernel.arg_names)
    kernel = compile(
        ASTSource(fused._shot_kernel, signature, constants),
        target=GPUTarget("cuda", 90, 32), options={"num_warps": fused.NUM_WARPS},
    )  # fmt: skip
    ptx = kernel.asm["ptx"]
    assert kernel.asm["cubin"]
    assert ptx.count("bar.sync") == 3
    assert "ld.global" in ptx and "ld.global.nc" not in ptx


def nvrtc_report(source: str, architecture: str) -> str:
    """NVRTC's log (ptxas' resource report) for `source` compiled for `architecture`."""
    import ctypes

    from torch.cuda._utils import _get_gpu_rtc_library

    nvrtc = _get_gpu_rtc_library()
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"fused_shots.cu", 0, None, None) == 0
    options = [f"--gpu-architecture={architecture}".encode(), b"--ptxas-options=-v"]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0, log.value.decode()
    return log.value.decode()


def test_cuda_kernel_compiles_for_the_h100_without_spilling():
    """The CUDA kernel for OpenFWI's acquisition compiles for sm_90 through NVRTC, without
    a GPU; its registers hold (no spills: they would go to local memory at every step) and
    its shared memory fits one block on an H100 (227 KB)."""
    from wavediffusion.physics import fused, fused_cuda

    setup = fused.prepare(OPENFWI_ACQUISITION, torch.device("cpu"), -1.0, 1)
    source = fused_cuda.kernel_source(setup, OPENFWI_ACQUISITION.n_shots, OPENFWI_ACQUISITION.n_receivers)
    report = nvrtc_report(source, "sm_90")
    spilled = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
    assert spilled and max(spilled) == 0, report
    assert fused_cuda.shared_bytes(setup) <= 227 * 1024
    # u (114 x 114), three strip fields per axis (52 x 114) and four coefficients per row:
    # the layout the kernel indexes
    assert fused_cuda.shared_bytes(setup) == 4 * (114 * 114 + 6 * 52 * 114 + 4 * 114)


# The CUDA kernel's own source as C++ for the CPU: one std::thread per CUDA thread of a
# block, __syncthreads() a std::barrier of the block's threads, the shared memory a global
# array, one block after another. It runs exactly the code NVRTC compiles, barriers
# included, so indexing and synchronisation errors show here; what it cannot show is
# GPU-only behaviour (the memory model across warps, the launch itself).
CPU_HARNESS = r"""
#include <barrier>
#include <thread>
#include <vector>
struct Index { unsigned x; };
static thread_local Index threadIdx;
static Index blockIdx;
static std::barrier<>* block_barrier;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads, blocks)
#define __restrict__
#define __shared__
#define __syncthreads() block_barrier->arrive_and_wait()
#define __ldg(pointer) (*(pointer))
struct alignas(16) float4 { float x, y, z, w; };
static float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
float4 shared[(SHARED_FLOATS + 3) / 4];
KERNEL
extern "C" void run_blocks(int blocks, const float* v2dt2, const float* source_term, const int* source_index,
                           const int* receiver_index, const float* a_y, const float* b_y, const float* dbdy,
                           const float* a_x, const float* b_x, const float* dbdx, float* out, int n_steps,
                           int first_recorded_step, double rdy, double rdy2, double rdx, double rdx2) {
    for (int block = 0; block < blocks; ++block) {
        blockIdx.x = block;
        std::barrier<> barrier(THREADS);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < THREADS; ++t)
            threads.emplace_back([=] {
                threadIdx.x = t;
                fused_shots(v2dt2, source_term, source_index, receiver_index, a_y, b_y, dbdy, a_x, b_x, dbdx,
                            out, n_steps, first_recorded_step, rdy, rdy2, rdx, rdx2);
            });
        for (auto& thread : threads) thread.join();
    }
}
"""


def cuda_kernel_on_cpu(velocity: torch.Tensor, acq: Acquisition, folder: Path) -> torch.Tensor:
    """fused_cuda's kernel source run on the CPU (g++, CPU_HARNESS) with the GPU's threads per
    block, calibrated as forward_model's fused backends: (B, S, nt, R) float32."""
    import ctypes

    from wavediffusion.physics import fused, fused_cuda

    from wavediffusion.physics.forward import DEEPWAVE_DELAY_SAMPLES, DEEPWAVE_SOURCE_SCALE

    setup = fused.prepare(acq, torch.device("cpu"), DEEPWAVE_SOURCE_SCALE, DEEPWAVE_DELAY_SAMPLES)
    kernel = fused_cuda.kernel_source(setup, acq.n_shots, acq.n_receivers)
    source = CPU_HARNESS.replace("KERNEL", kernel).replace("SHARED_FLOATS", str(fused_cuda.shared_bytes(setup) // 4))
    (folder / "kernel.cpp").write_text(source)
    library = folder / "kernel.so"
    command = ["g++", "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
               str(folder / "kernel.cpp"), "-o", str(library)]  # fmt: skip
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-4000:]
    run_blocks = ctypes.CDLL(str(library)).run_blocks
    v2dt2, source_term = fused.model_terms(velocity.float().contiguous(), setup, acq)
    n_shots = velocity.shape[0] * acq.n_shots
    out = torch.zeros(n_shots, acq.nt, acq.n_receivers)
    pointer = lambda tensor: ctypes.c_void_p(tensor.data_ptr())  # noqa: E731
    tensors = (v2dt2, source_term, setup.source_index, setup.receiver_index,
               setup.a_y, setup.b_y, setup.dbdy, setup.a_x, setup.b_x, setup.dbdx, out)  # fmt: skip
    run_blocks(ctypes.c_int(n_shots), *map(pointer, tensors), ctypes.c_int(setup.n_steps),
               ctypes.c_int(setup.first_recorded_step), *map(ctypes.c_double, (1 / acq.dx, 1 / acq.dx**2) * 2))
    return out.reshape(velocity.shape[0], acq.n_shots, acq.nt, acq.n_receivers)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to run the CUDA source on the CPU")
def test_cuda_kernel_source_gives_deepwaves_data_on_the_cpu(tmp_path):
    """The CUDA kernel's source, run on the CPU, against deepwave: the four maps of the
    interpreter's test, two shots (one at the model's edge), 150 samples."""
    maps = torch.cat([layered_map(SHORT), smooth_random_map(SHORT), real_maps()])
    cuda = cuda_kernel_on_cpu(maps, SHORT, tmp_path)
    deep = forward_model(maps, "deepwave", SHORT)
    errors = relative_l2(cuda, deep)
    print(f"fused-cuda's source on the CPU vs deepwave, per-model relative L2: {errors}")
    assert max(errors) <= TOLERANCE, errors
    assert deep.abs().max() > 1.0


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to run the CUDA source on the CPU")
def test_cuda_kernel_source_holds_on_another_grid(tmp_path):
    """The same on a grid that is neither square nor OpenFWI's (40 rows x 90 columns, padded
    84 x 134: 130 updated columns on 160 lanes, 6 groups of 14 rows, the last of 10), a shot
    beside the right edge: catches rows and columns swapped in the block shape."""
    acq = dataclasses.replace(SHORT, nz=40, nx=90, source_columns=(5, 89))
    from wavediffusion.physics import fused, fused_cuda

    assert fused_cuda.block_shape(fused.prepare(acq, torch.device("cpu"), -1.0, 1), acq.n_receivers) == (160, 14, 960)
    maps = torch.cat([layered_map(acq), smooth_random_map(acq, seed=1)])
    errors = relative_l2(cuda_kernel_on_cpu(maps, acq, tmp_path), forward_model(maps, "deepwave", acq))
    print(f"fused-cuda's source on the CPU vs deepwave, 40 x 90 grid, per-model relative L2: {errors}")
    assert max(errors) <= TOLERANCE, errors


def test_forward_modelling_times_another_version_of_the_kernel(tmp_path, monkeypatch):
    """benchmarks/forward_modelling.py --kernel NAME=FILE: FILE's module becomes the backend
    fused-cuda@NAME of forward_model in that process (a kernel change's before and after
    timed in one run); a malformed NAME=FILE stops with a message."""
    import importlib
    import importlib.util

    from wavediffusion.physics import forward as fwd
    from wavediffusion.physics import fused_cuda

    # the registry as it is, restored after: the benchmark binds FUSED_MODULES when imported
    monkeypatch.setattr(fwd, "FUSED_MODULES", dict(fwd.FUSED_MODULES))
    monkeypatch.setattr(fwd, "BACKENDS", fwd.BACKENDS)
    monkeypatch.delitem(sys.modules, "wavediffusion.physics.fused_cuda_older", raising=False)
    spec = importlib.util.spec_from_file_location("forward_modelling", REPO / "benchmarks" / "forward_modelling.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    older = tmp_path / "fused_cuda.py"
    older.write_text(Path(fused_cuda.__file__).read_text().replace("MAX_THREADS = 1024", "MAX_THREADS = 512"))
    try:
        assert benchmark.register_kernel(f"older={older}") == "fused-cuda@older"
        kernel = importlib.import_module("wavediffusion.physics.fused_cuda_older")
        assert kernel is not fused_cuda and kernel.MAX_THREADS == 512
        assert "fused-cuda@older" in fwd.BACKENDS
        with pytest.raises(ValueError, match="fused-cuda backend is a CUDA kernel"):  # routed to that module
            forward_model(torch.full((1, *OPENFWI_ACQUISITION.velocity_shape), 3000.0), "fused-cuda@older")
    finally:
        sys.modules.pop("wavediffusion.physics.fused_cuda_older", None)
    for malformed in ("older", "1st=file.py", f"older={tmp_path / 'missing.txt'}"):
        with pytest.raises(SystemExit, match="--kernel"):
            benchmark.register_kernel(malformed)


def test_cuda_backend_refuses_a_cpu_tensor():
    velocity = torch.full((1, *OPENFWI_ACQUISITION.velocity_shape), 3000.0)
    with pytest.raises(ValueError, match="fused-cuda backend is a CUDA kernel.*backend='deepwave'"):
        forward_model(velocity, "fused-cuda")


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["fused", "fused-cuda"])
def test_fused_matches_deepwave_on_cuda(backend):
    """OpenFWI's full acquisition on 64 maps: per-model relative L2 distribution, then the bound.

    Also checks batch independence where programs really run concurrently.
    """
    maps = [torch.from_numpy(load_real_velocity(f, "test")[:24]) for f in ("FlatVel-A", "CurveVel-A")]
    maps += [smooth_random_map(OPENFWI_ACQUISITION, seed) for seed in range(16)]
    velocity = torch.cat(maps).cuda()  # (64, 1, 70, 70)
    deep = forward_model(velocity, "deepwave")
    fused = forward_model(velocity, backend, batch_size=64)
    errors = torch.tensor(relative_l2(fused, deep))
    print(
        f"{backend} vs deepwave on CUDA, per-model relative L2 over 64 maps: "
        f"min {errors.min():.2e} median {errors.median():.2e} max {errors.max():.2e}"
    )
    assert errors.max() <= TOLERANCE, errors.tolist()
    alone = forward_model(velocity[5:6], backend)
    chunked = forward_model(velocity, backend, batch_size=7)
    assert torch.equal(alone[0], fused[5])
    assert torch.equal(chunked, fused)
