"""The workflow's steps: each Snakemake rule's shell runs one `wavediffusion <command>`, and
each command is one `run_<command>` function here, in the module named like the rule file
(rules/stage1.smk -> steps/stage1.py). A step's signature is its command's options: the CLI
is generated from it (cli.py), so an option has one home. A step parses the config slice
its rule passes, loads its inputs (models, stores, tables), calls the libraries below, which
take and return objects, and writes its outputs. The exceptions are the jobs whose work is
files: training (checkpoints in a run folder), the stores' writers (preprocess, encoding,
sampling and checking shards) and the downloads and exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

# The modules in the order of the DAG: `wavediffusion --help` lists the commands so.
MODULES = ("common", "data", "physics", "stage1", "stage2", "sampling", "fid", "inversion", "ablation", "claims")


@dataclass(frozen=True)
class Step:
    """What the CLI needs to know of a step beyond its options."""

    gpu: bool = False  # its rule asks for a GPU: claim one (devices.claim_local_gpu) before CUDA starts
    batch_key: str | None = None  # the config key to lower when it runs out of GPU memory


def step(*, gpu: bool = False, batch_key: str | None = None):
    """Mark a function as a workflow step (a CLI command)."""

    def mark(function):
        function.step = Step(gpu, batch_key)
        return function

    return mark


class Positional(str):
    """The help text of an argument given by position rather than as `--name`."""


# Options many steps share.
Threads = Annotated[int | None, "CPU threads for torch (Snakemake passes the rule's threads; default: torch's choice)"]
Seed = Annotated[int, "the global seed (config seed), from which each random draw derives its own"]
Dataset = Annotated[str, "the dataset store (preprocess' dataset.zarr)"]
Stage1Model = Annotated[str, "train-stage1's weights: the VQ autoencoder's model.pt"]
Stage2Model = Annotated[str, "train-stage2's weights: the diffusion UNet's model.pt"]
PairsStore = Annotated[str, "the variant's pairs store (create-pairs-store's pairs.zarr)"]
Variant = Annotated[str, "the Stage-1 variant (config stage1.variants: 1vq or 2vq)"]
Shard = Annotated[int, "the shard's index in the pairs store, from 0"]
Backend = Annotated[Literal["deepwave", "fused", "fused-cuda", "openfwi"],
                    "the forward-modelling backend (physics/forward.py; the fused ones on CUDA only)"]


def use_threads(threads: int | None) -> None:
    """Honour the rule's `threads:` instead of torch's guess. The processes torchrun starts on
    one node share the job's threads (LOCAL_WORLD_SIZE of them), so each takes its share."""
    if threads:
        import os

        import torch

        torch.set_num_threads(max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def settings_from_json(cls, text: str, seed: int):
    """A rule's --settings JSON (its config slice) with the global seed, as `cls` (whose
    from_dict rejects unknown keys, naming the config section)."""
    import json

    return cls.from_dict({**json.loads(text), "seed": seed})
