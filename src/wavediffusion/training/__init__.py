"""The project's one training loop (used by every model), its distributed set-up and its
checkpoints. See loop.py for the design: the task writes its training step out, the loop
owns data order, DDP, lr schedule, autocast, clipping, validation, early stopping, logs
and exact resume."""

from .checkpoint import ConfigMismatchError, atomic_save, latest_checkpoint, load
from .distributed import DistEnv, all_reduce_mean, barrier, cleanup, is_main, setup
from .loop import Run, Task, TrainConfig, adam, lr_factor, train

__all__ = [
    "ConfigMismatchError", "DistEnv", "Run", "Task", "TrainConfig", "adam", "all_reduce_mean",
    "atomic_save", "barrier", "cleanup", "is_main", "latest_checkpoint", "load",
    "lr_factor", "setup", "train",
]
