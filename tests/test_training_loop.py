"""The training loop on CPU: learning, the lr formula, data order, early stopping, atomic
checkpoints, exact resume after SIGKILL, refusal to resume with another config, and DDP
over 2 processes (torchrun, and srun-style SLURM_* variables) against 1 process.

The toy tasks and the script the subprocess tests run are in tests/toy_training.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import toy_training as toy

from wavediffusion.training import ConfigMismatchError, lr_factor, train
from wavediffusion.training import checkpoint as ckpt
from wavediffusion.training.distributed import first_host, read_launch
from wavediffusion.training.loop import CsvLog, train_batches, val_batches

SCRIPT = Path(__file__).resolve().parent / "toy_training.py"


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: on 2 cores, tiny ops with 2 OpenMP threads run ~10x slower, and the
    script the subprocess tests run uses 1 thread, so in-process references must too."""
    with one_thread():
        yield


@contextlib.contextmanager
def one_thread():
    """The script runs with 1 torch thread; in-process references must too, to compare."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_script(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> dict[str, torch.Tensor]:
    saved = ckpt.load(path)
    return {f"{m}.{k}": v for m, sd in saved["modules"].items() for k, v in sd.items()}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ---------------------------------------------------------------------------------------
# Pure parts: lr formula, data order, launcher detection.


def test_lr_factor_golden_values():
    assert lr_factor(0, 0, warmup_steps=4, lr_decay=0.9) == 0.25
    assert lr_factor(2, 0, warmup_steps=4, lr_decay=0.9) == 0.75
    assert lr_factor(3, 0, warmup_steps=4, lr_decay=0.9) == 1.0
    assert lr_factor(30, 2, warmup_steps=4, lr_decay=0.9) == pytest.approx(0.81, rel=1e-15)
    assert lr_factor(0, 0, warmup_steps=0, lr_decay=0.98) == 1.0
    # Stage 2: 10 000 warm-up steps spanning several epochs; decay keeps running meanwhile
    assert lr_factor(4999, 3, warmup_steps=10_000, lr_decay=0.98) == pytest.approx(0.5 * 0.98**3, rel=1e-15)
    assert lr_factor(10_000, 7, warmup_steps=10_000, lr_decay=0.98) == pytest.approx(0.98**7, rel=1e-15)


def test_train_batches_shard_resume_and_epoch_order():
    n, batch, seed = 45, 8, 3
    single = train_batches(n, batch, 1, 0, seed, epoch=2)
    assert len(single) == n // batch and all(len(b) == batch for b in single)  # drop_last
    assert len({i for b in single for i in b}) == (n // batch) * batch           # no repeats
    assert single == train_batches(n, batch, 1, 0, seed, epoch=2)                # (seed, epoch) fixes it
    assert single != train_batches(n, batch, 1, 0, seed, epoch=3)
    assert single != train_batches(n, batch, 1, 0, seed + 1, epoch=2)
    rank0 = train_batches(n, batch, 2, 0, seed, epoch=2)
    rank1 = train_batches(n, batch, 2, 1, seed, epoch=2)
    for k in range(len(single)):  # the ranks' batches are the two halves of the global batch
        assert rank0[k] + rank1[k] == single[k]
    assert train_batches(n, batch, 2, 1, seed, epoch=2, start=3) == rank1[3:]
    with pytest.raises(ValueError, match="divide"):
        train_batches(n, 9, 2, 0, seed, 0)


def test_val_batches_cover_each_sample_once():
    for n, world in [(32, 1), (33, 2), (10, 4), (3, 4)]:
        seen = [i for r in range(world) for b in val_batches(n, 8, world, r) for i in b]
        assert sorted(seen) == list(range(n))


def test_launcher_detection_from_environment():
    assert read_launch({}).launcher == "single"
    torchrun = read_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                            "MASTER_ADDR": "node7", "MASTER_PORT": "29500"})
    assert (torchrun.launcher, torchrun.rank, torchrun.world_size, torchrun.local_rank) == ("torchrun", 3, 8, 1)
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "gpu[03-05,09],cpu1", "SLURM_JOB_ID": "123456"}
    launch = read_launch(srun)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("slurm", 5, 8, 1)
    assert (launch.master_addr, launch.master_port) == ("gpu03", 23456)
    assert read_launch({**srun, "MASTER_ADDR": "login1", "MASTER_PORT": "4000"}).master_addr == "login1"
    # A plain `python` in an `sbatch --ntasks=8` script is ONE process, not rank 0 of 8.
    batch_script = {k: v for k, v in srun.items() if not k.startswith("SLURM_STEP")}
    assert read_launch({**batch_script, "SLURM_PROCID": "0"}).launcher == "single"
    assert first_host("node-a,node-b") == "node-a"
    assert first_host("r1n[2-3]x[7-8],r2n1") == "r1n2x7"
    assert first_host("gpu[010-012]") == "gpu010"


# ---------------------------------------------------------------------------------------
# In-process training runs.


def test_loss_falls_and_files_written(tmp_path):
    config = toy.toy_config(max_epochs=8, lr_decay=0.95)
    task, train_set, val_set = toy.build("regression", config)
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(task.net(val_set.x), val_set.y).item()
    summary = train(task, train_set, val_set, config, tmp_path)
    assert summary["stop_reason"] == "max_epochs" and summary["steps"] == 8 * 12
    assert summary["last_val"]["loss"] < 0.25 * before, (before, summary["last_val"])
    for name in ("log.csv", "final.pt", "best.pt", "summary.json"):
        assert (tmp_path / name).is_file()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        "step_000000090.pt", "step_000000095.pt", "step_000000096.pt"]  # keep_checkpoints=3
    final = ckpt.load(tmp_path / "final.pt")
    assert torch.equal(final["modules"]["net"]["0.weight"], task.net[0].weight)
    # the logged lr follows base · min(1, (step+1)/warmup) · decay**epoch, step by step
    rows = [r for r in read_log(tmp_path / "log.csv") if r["train/loss"]]
    assert len(rows) == 96
    for row in rows:
        step_index, epoch = int(row["step"]) - 1, int(row["epoch"])
        expected = 1e-2 * min(1.0, (step_index + 1) / 4) * 0.95**epoch
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-12)


def test_gan_two_optimisers_discriminator_starts_late(tmp_path):
    config = toy.toy_config(max_epochs=6, lr=3e-3)
    task, train_set, val_set = toy.build("gan", config)
    d_before = task.discriminator[0].weight.detach().clone()
    with torch.no_grad():
        gap_before = task.validate({"z": val_set.z}, None)["gap"].item()
    summary = train(task, train_set, val_set, config, tmp_path)
    rows = [r for r in read_log(tmp_path / "log.csv") if r["train/g_loss"]]
    assert [r["train/d_loss"] == "" for r in rows[:5]] == [True] * 4 + [False]  # steps 0-3: no D step
    assert all(r["train/d_loss"] for r in rows[4:])
    assert not torch.equal(task.discriminator[0].weight, d_before)
    assert summary["last_val"]["gap"] < 0.5 * gap_before, (gap_before, summary["last_val"])


@pytest.mark.parametrize("lr, min_delta", [(0.0, 0.0), (1e-4, 1.0)])
def test_early_stopping_after_patience_flat_validations(tmp_path, lr, min_delta):
    """lr 0: the metric is exactly flat. Tiny lr with a large min_delta: it improves, but by
    less than min_delta, which counts as flat too."""
    config = toy.toy_config(max_epochs=20, lr=lr, early_stop_patience=3, min_delta=min_delta)
    task, train_set, val_set = toy.build("regression", config)
    summary = train(task, train_set, val_set, config, tmp_path)
    # epoch 0 sets the best, epochs 1, 2, 3 do not beat it → stop after epoch 3
    assert summary["stop_reason"] == "early_stop"
    assert summary["epoch"] == 4 and summary["best_epoch"] == 0 and summary["steps"] == 4 * 12
    assert len([r for r in read_log(tmp_path / "log.csv") if r["val/loss"]]) == 4
    # best.pt holds the weights of the best validation (epoch 0), though the file is written
    # later (at a checkpoint or the end), and final.pt the last ones
    best, final = ckpt.load(tmp_path / "best.pt"), ckpt.load(tmp_path / "final.pt")
    assert (best["step"], best["val"]["loss"]) == (12, summary["best_val"]) and final["step"] == 4 * 12
    if lr > 0:
        assert any(not torch.equal(best["modules"]["net"][k], final["modules"]["net"][k])
                   for k in best["modules"]["net"])


def test_validation_trend_tells_a_flat_curve_from_a_falling_one(tmp_path):
    from wavediffusion.training.runs import validation_trend

    falling = toy.toy_config(max_epochs=9, lr=3e-3)
    summary = train(*toy.build("regression", falling), falling, tmp_path / "falling")
    trend = validation_trend(tmp_path / "falling" / "log.csv", summary["val_metric"])
    assert trend["n_validations"] == 9 and trend["best_last_third"] < trend["best_first_two_thirds"]
    assert trend["improvement_last_third"] > 0.02
    flat = toy.toy_config(max_epochs=9, lr=0.0)
    summary = train(*toy.build("regression", flat), flat, tmp_path / "flat")
    assert validation_trend(tmp_path / "flat" / "log.csv", summary["val_metric"])["improvement_last_third"] == 0.0
    short = toy.toy_config(max_epochs=2)
    summary = train(*toy.build("regression", short), short, tmp_path / "short")
    assert validation_trend(tmp_path / "short" / "log.csv", summary["val_metric"]) is None  # two validations
    assert validation_trend(tmp_path / "short" / "log.csv", None) is None  # no validation metric


def test_min_steps_extends_the_epochs_and_defers_early_stopping(tmp_path):
    """12 steps an epoch: 2 epochs would be 24 steps, min_steps 40 makes it 4 (48 steps); a flat
    metric that would stop early after epoch 4 (48 steps) runs on to 60 with min_steps 60."""
    config = toy.toy_config(max_epochs=2, min_steps=40)
    summary = train(*toy.build("regression", config), config, tmp_path / "epochs")
    assert (summary["stop_reason"], summary["steps"], summary["epoch"]) == ("min_steps", 48, 4)
    config = toy.toy_config(max_epochs=20, lr=0.0, early_stop_patience=3, min_steps=60)
    summary = train(*toy.build("regression", config), config, tmp_path / "early")
    assert (summary["stop_reason"], summary["steps"], summary["epoch"]) == ("early_stop", 60, 5)
    with pytest.raises(ValueError, match="min_steps"):
        toy.toy_config(max_steps=10, min_steps=20)


def test_training_curves_figure_of_a_run(tmp_path):
    from wavediffusion.evaluation.figures import plot_training_curves

    config = toy.toy_config(max_epochs=2)
    train(*toy.build("regression", config), config, tmp_path)
    assert plot_training_curves(tmp_path / "log.csv", tmp_path / "curves.png").stat().st_size > 10_000


def test_checkpoints_fall_every_n_steps_not_at_every_epoch_end(tmp_path):
    """12 steps an epoch, a checkpoint every 5: none at the epoch ends 12 and 24, one at the end."""
    config = toy.toy_config(max_epochs=3, keep_checkpoints=0)
    train(*toy.build("regression", config), config, tmp_path)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        f"step_{step:09d}.pt" for step in (5, 10, 15, 20, 25, 30, 35, 36)]
    config = toy.toy_config(max_epochs=2, checkpoint_every_steps=12, keep_checkpoints=0)
    train(*toy.build("regression", config), config, tmp_path / "due_at_the_end")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "due_at_the_end" / "checkpoints")] == [
        "step_000000012.pt", "step_000000024.pt"]  # due at an epoch end: saved after its validation
    saved = ckpt.load(tmp_path / "due_at_the_end" / "checkpoints" / "step_000000012.pt")["state"]
    assert (saved["epoch"], saved["batch_in_epoch"], saved["last_val_step"]) == (1, 0, 12)


def test_max_steps_stops_mid_epoch_validates_and_checkpoints(tmp_path):
    config = toy.toy_config(max_epochs=5, max_steps=17)
    summary = train(*toy.build("regression", config), config, tmp_path)
    assert (summary["stop_reason"], summary["steps"], summary["epoch"]) == ("max_steps", 17, 1)
    assert summary["last_val"] and ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_000000017.pt"
    state = ckpt.load(tmp_path / "checkpoints" / "step_000000017.pt")["state"]
    assert (state["epoch"], state["batch_in_epoch"], state["finished"]) == (1, 5, True)


def test_max_seconds_stops_at_the_first_log_step_after_the_budget(tmp_path):
    config = toy.toy_config(max_epochs=5, max_seconds=1e-6, log_every_steps=3)
    summary = train(*toy.build("regression", config), config, tmp_path)
    assert (summary["stop_reason"], summary["steps"]) == ("max_seconds", 3)
    assert summary["last_val"] and summary["seconds"] >= summary["seconds_this_call"] > 0
    state = ckpt.load(tmp_path / "checkpoints" / "step_000000003.pt")["state"]
    assert state["finished"] and 0 < state["seconds"] <= summary["seconds"]
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        toy.toy_config(max_seconds=0)


def test_a_training_set_smaller_than_one_batch_is_an_error_not_endless_epochs(tmp_path):
    config = toy.toy_config(batch_size=128)  # the toy training set has 96 samples
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(*toy.build("regression", config), config, tmp_path)


def test_resume_with_changed_config_is_refused_naming_the_keys(tmp_path):
    config = toy.toy_config(max_epochs=1)
    train(*toy.build("regression", config), config, tmp_path)

    changed = toy.toy_config(max_epochs=1, lr=3e-3, warmup_steps=10)
    with pytest.raises(ConfigMismatchError) as error:
        train(*toy.build("regression", changed, noise=0.2), changed, tmp_path)
    message = str(error.value)
    assert "train.lr: 0.01 → 0.003" in message and "train.warmup_steps: 4 → 10" in message
    assert "task.noise: 0.0 → 0.2" in message and "train.max_epochs" not in message

    # keys that cannot change the weights (logging, checkpoint cadence, workers) may change
    cosmetic = toy.toy_config(max_epochs=1, log_every_steps=7, checkpoint_every_steps=2)
    summary = train(*toy.build("regression", cosmetic), cosmetic, tmp_path)
    assert summary["resumed_from"] and summary["steps_this_call"] == 0


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = ckpt.checkpoint_path(tmp_path, 10)
    ckpt.atomic_save({"x": torch.arange(3)}, path)

    def crash_mid_write(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"x": torch.arange(5)}, path)           # over an existing file
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"x": torch.arange(5)}, ckpt.checkpoint_path(tmp_path, 20))  # a new one
    monkeypatch.undo()
    assert torch.equal(ckpt.load(path)["x"], torch.arange(3))   # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no partial file, no temp left
    (tmp_path / ".step_000000030.pt.tmp-4242").write_bytes(b"left by a SIGKILLed writer")
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_csv_log_adds_columns_and_truncates_on_resume(tmp_path):
    log = CsvLog(tmp_path / "log.csv", keep_rows=0)
    log.append({"step": 1, "train/loss": 0.5})
    log.append({"step": 2, "train/loss": 0.25, "train/d_loss": 1.5})
    log.append({"step": 3, "train/loss": 0.125})
    assert [r["train/d_loss"] for r in read_log(tmp_path / "log.csv")] == ["", "1.5", ""]
    CsvLog(tmp_path / "log.csv", keep_rows=2)
    assert [r["step"] for r in read_log(tmp_path / "log.csv")] == ["1", "2"]


# ---------------------------------------------------------------------------------------
# Exact resume after SIGKILL.


def kill_twice_then_finish(out: Path, markers: Path, *extra: str) -> dict:
    """Same command three times. Run 1 dies (SIGKILL) at step 17, mid-epoch 1, two steps
    after checkpoint 15. Run 2 resumes from 15 and dies inside the write of checkpoint 20,
    after its temporary file is complete but before the rename. Run 3 resumes from 15
    again and finishes. Returns run 3's summary of the regression task."""
    args = ["--out", str(out), "--kill-at-step", "17", "--kill-in-checkpoint", "20",
            "--marker-dir", str(markers), *extra]
    checkpoints = out / "regression" / "checkpoints"

    first = run_script(*args)
    assert first.returncode == -9, first.stderr
    assert ckpt.latest_checkpoint(checkpoints).name == "step_000000015.pt"

    second = run_script(*args)
    assert second.returncode == -9, second.stderr
    leftovers = [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]
    assert leftovers and leftovers[0].startswith(".step_000000020.pt.tmp-")
    assert ckpt.latest_checkpoint(checkpoints).name == "step_000000015.pt"

    third = run_script(*args)
    assert third.returncode == 0, third.stderr
    summary = json.loads(third.stdout.strip().splitlines()[-1])["summaries"]["regression"]
    assert summary["resumed_from"].endswith("step_000000015.pt") and summary["steps"] == 36
    return summary


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Bit-identical final weights, and the same log row for row (no duplicated steps)."""
    a, b = weights(resumed / "final.pt"), weights(reference / "final.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in b), f"max |diff| = {max_abs_diff(a, b):.3g}"

    def timeless(rows):  # measurements of the machine, not results of the run
        return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s", "gpu_peak_gib")} for r in rows]

    assert timeless(read_log(resumed / "log.csv")) == timeless(read_log(reference / "log.csv"))


def test_sigkill_and_rerun_equals_uninterrupted_run_bit_for_bit(tmp_path):
    """Each step draws torch, numpy and Python random numbers (--noise), so all three
    generators, the data position and the optimiser must come back exactly."""
    kill_twice_then_finish(tmp_path / "run", tmp_path / "markers", "--noise", "0.1")
    # the uninterrupted reference: the same configuration, in this process, 1 thread
    config = toy.toy_config()
    train(*toy.build("regression", config, noise=0.1), config, tmp_path / "reference")
    assert_same_run(tmp_path / "run" / "regression", tmp_path / "reference")


@pytest.mark.gpu
def test_gpu_bf16_resume_and_two_gpu_ddp(tmp_path):
    """On CUDA with bf16 autocast: kill/resume gives the uninterrupted run's weights, and
    with 2 GPUs, NCCL DDP follows the 1-GPU run (bf16 matmuls: a looser bound, printed)."""
    kill_twice_then_finish(tmp_path / "run", tmp_path / "markers", "--noise", "0.1", "--device", "cuda")
    reference = run_script("--out", str(tmp_path / "reference"), "--noise", "0.1", "--device", "cuda")
    assert reference.returncode == 0, reference.stderr
    assert json.loads(reference.stdout.strip().splitlines()[-1])["device"].startswith("cuda")
    assert_same_run(tmp_path / "run" / "regression", tmp_path / "reference" / "regression")
    if torch.cuda.device_count() < 2:
        return
    # Bounds from the first run on 2 H100s (torch 2.11): bf16 regression 7.8e-4, GAN 1.5e-2
    # (a GAN amplifies bf16 rounding); fp32 (no TF32) is the check of the NCCL path itself.
    bounds = {("fp32", "regression"): 1e-4, ("fp32", "gan"): 1e-4,
              ("bf16", "regression"): 5e-3, ("bf16", "gan"): 5e-2}
    for precision in ("fp32", "bf16"):
        both = ["--tasks", "regression,gan", "--device", "cuda", "--precision", precision]
        one = run_script("--out", str(tmp_path / f"one-{precision}"), *both)
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              str(SCRIPT), "--out", str(tmp_path / f"two-{precision}"), *both,
                              "--forbid-writes-off-rank0"], check=False, capture_output=True, text=True,
                             timeout=300)
        assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
        assert json.loads(two.stdout.strip().splitlines()[-1])["world_size"] == 2
        for name in ("regression", "gan"):
            diff = max_abs_diff(weights(tmp_path / f"two-{precision}" / name / "final.pt"),
                                weights(tmp_path / f"one-{precision}" / name / "final.pt"))
            print(f"cuda {precision} {name}: max |w_2gpu - w_1gpu| = {diff:.3g}")
            assert diff <= bounds[precision, name]


# ---------------------------------------------------------------------------------------
# Two processes on CPU (gloo) against one.

# Measured on 2 CPU cores, torch 2.14.1: after 36 steps the 2-process weights differ from
# the 1-process weights by at most 1.2e-7 (float32 rounding: the gradient mean is
# (g0 + g1) / 2 over ranks instead of one mean over 8 samples). Bound: 1e-6.
DDP_TOLERANCE = 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """The toy regression and GAN, trained by 1 process (in-process) and by 2 processes
    launched by torchrun and by srun-style variables, with the same global batch."""
    root = tmp_path_factory.mktemp("ddp")
    config = toy.toy_config()
    with one_thread():
        for name in ("regression", "gan"):
            train(*toy.build(name, config), config, root / "single" / name)
    common = ["--tasks", "regression,gan", "--forbid-writes-off-rank0"]

    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SCRIPT), "--out", str(root / "torchrun"), *common],
        check=False, capture_output=True, text=True, timeout=180)

    port = free_port()  # srun itself would not give one; read_launch derives it from SLURM_JOB_ID
    slurm = []
    for rank in range(2):
        env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2",
               "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "4242",
               "SLURM_STEP_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        slurm.append(subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(root / "slurm"), *common],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    slurm_out = [p.communicate(timeout=180) for p in slurm]
    return {"root": root, "torchrun": torchrun, "slurm": (slurm, slurm_out)}


def check_two_process_result(root: Path, out: Path, stdout: str, launcher: str) -> None:
    result = json.loads(stdout.strip().splitlines()[-1])
    assert (result["launcher"], result["world_size"]) == (launcher, 2)
    for name in ("regression", "gan"):
        diff = max_abs_diff(weights(out / name / "final.pt"), weights(root / "single" / name / "final.pt"))
        print(f"{launcher} {name}: max |w_2proc - w_1proc| = {diff:.3g}")
        assert diff <= DDP_TOLERANCE
        single = json.loads((root / "single" / name / "summary.json").read_text())
        for key, value in single["last_val"].items():  # validation averaged over ranks
            assert result["summaries"][name]["last_val"][key] == pytest.approx(value, rel=1e-5)
        files = sorted(str(p.relative_to(out / name)) for p in (out / name).rglob("*"))
        assert files == ["best.pt", "checkpoints", "checkpoints/step_000000030.pt",
                         "checkpoints/step_000000035.pt", "checkpoints/step_000000036.pt",
                         "final.pt", "log.csv", "summary.json"]


def test_torchrun_two_processes_match_one_process(two_process_runs):
    run = two_process_runs["torchrun"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 1: write guard active" in run.stdout  # rank 1 wrote nothing under out/ (else it failed)
    check_two_process_result(two_process_runs["root"], two_process_runs["root"] / "torchrun", run.stdout,
                             "torchrun")


def test_srun_style_two_processes_match_one_process(two_process_runs):
    processes, outputs = two_process_runs["slurm"]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "rank 1: write guard active" in outputs[1][0]
    root = two_process_runs["root"]
    check_two_process_result(root, root / "slurm", outputs[0][0], "slurm")
    # both launchers run the same code path: identical results, bit for bit
    for name in ("regression", "gan"):
        a, b = weights(root / "slurm" / name / "final.pt"), weights(root / "torchrun" / name / "final.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------
# The Stage-1 VQ autoencoder on two processes (gloo) against one.

STAGE1_STEPS = 6
# Measured on 2 CPU cores, torch 2.14.1: after 6 steps (lr 1e-3) the weights differ by at most
# 3.4e-5 (the largest: the attention key biases, whose true gradient is 0, so Adam normalises
# rounding noise into steps; all else <= 1.1e-5). That is float32 summation order: the same
# 1-process run with 2 threads instead of 1 differs from it by 2.3e-5. Bound: 1e-4. Starting from
# other initial weights, or re-initialising codes from rank 0's half batch, gives 1.6.
STAGE1_TOLERANCE = 1e-4


def stage1_run(out: Path) -> None:
    """Train the tiny Stage-1 autoencoder (discriminators off) for STAGE1_STEPS steps of a
    global batch of 4 from a fresh process's RNG state; rank 0 writes out/reinit.json, the
    number of codes each training forward re-initialised. dead_code_steps=2 makes the
    re-initialisation fire at step 0 (every code the first batch did not choose) and again
    at later steps. Run in-process (1 process) and as this file's __main__ (under torchrun)."""
    import dataclasses

    from wavediffusion.models.autoencoder import AutoencoderConfig
    from wavediffusion.models.discriminator import DiscriminatorConfig
    from wavediffusion.models.quantizer import VectorQuantizer
    from wavediffusion.training.distributed import rank
    from wavediffusion.training.loop import TrainConfig
    from wavediffusion.training.stage1 import Stage1Losses, Stage1Task

    torch.seed()  # whatever the global generator's state, the initial weights must not depend on it
    config = TrainConfig(max_steps=STAGE1_STEPS, batch_size=4, lr=1e-3, precision="fp32", early_stop_patience=None,
                         checkpoint_every_steps=10**6, log_every_steps=1, seed=5, device="cpu", progress=False,
                         tensorboard=False)
    model = dataclasses.replace(AutoencoderConfig.tiny(), dead_code_steps=2)
    task = Stage1Task(model, DiscriminatorConfig.tiny(3), Stage1Losses(disc_start=10**6), config)
    g = torch.Generator().manual_seed(11)
    seismic, velocity = torch.rand(8, *model.seismic_shape, generator=g) * 2 - 1, torch.rand(8, *model.velocity_shape, generator=g) * 2 - 1
    data = [{"seismic": s, "velocity": v} for s, v in zip(seismic, velocity)]

    reinitialised, expire = [], VectorQuantizer._expire_dead_codes

    def recording(self, counts, flat):
        count = expire(self, counts, flat)
        reinitialised.append(int(count))
        return count

    VectorQuantizer._expire_dead_codes = recording
    try:
        train(task, data, None, config, out)
    finally:
        VectorQuantizer._expire_dead_codes = expire
    if rank() == 0:
        (out / "reinit.json").write_text(json.dumps(reinitialised))


def test_stage1_two_processes_match_one_process(tmp_path):
    """The VQ autoencoder's DDP run follows the 1-process run: the same initial weights
    (seeded, though each process's global generator starts elsewhere), the same codes chosen
    and re-initialised at every step (counts summed over ranks, replacements drawn by rank 0
    from the global batch with the 1-process RNG stream), the same logged metrics, and final
    weights equal up to float32 summation order."""
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          __file__, str(tmp_path / "two")], check=False, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stage1_run(tmp_path / "one")  # in this process, 1 thread (the autouse fixture)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "different initial weights" not in two.stderr

    reinit = json.loads((tmp_path / "one" / "reinit.json").read_text())
    assert json.loads((tmp_path / "two" / "reinit.json").read_text()) == reinit
    assert len(reinit) == STAGE1_STEPS and reinit[0] > 0 and sum(reinit[1:]) > 0  # it did fire, and later too

    one_log, two_log = read_log(tmp_path / "one" / "log.csv"), read_log(tmp_path / "two" / "log.csv")
    assert len(one_log) == len(two_log) == STAGE1_STEPS
    for a, b in zip(one_log, two_log):
        # the perplexity comes from the usage counts summed over ranks: identical
        assert float(b["train/perplexity_shared"]) == float(a["train/perplexity_shared"])
        for key in ("train/loss", "train/rec_seismic", "train/rec_velocity", "train/vq"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), key

    one, two_w = weights(tmp_path / "one" / "final.pt"), weights(tmp_path / "two" / "final.pt")
    usage = "autoencoder.quantizer.steps_since_used"
    assert torch.equal(one[usage], two_w[usage])  # the same codes chosen at every step
    diff = max_abs_diff(one, two_w)
    print(f"stage1: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff <= STAGE1_TOLERANCE


if __name__ == "__main__":  # one rank of test_stage1_two_processes_match_one_process, under torchrun
    from wavediffusion.training import cleanup, setup

    torch.set_num_threads(1)
    setup("cpu")
    stage1_run(Path(sys.argv[1]))
    cleanup()
