"""What the training loop and the sampler do to run fast on a GPU: compiling modules, the
channels-last layout, fused optimiser steps (TrainConfig's `compile` and `channels_last`,
sampling's `compile`). Each changes only the rounding of what is computed; the training
loop's notes (docs/training.md) say when each applies.
"""

from __future__ import annotations

import torch
from torch import nn

# Dynamo keeps one compiled graph per code object and input signature (shapes, grad mode,
# train/eval); beyond its default limit of 8 it would silently run the rest eagerly.
RECOMPILE_LIMIT = 64


def compile_module(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile `module` in place (nn.Module.compile: same object, same state_dict keys).

    The whole network becomes one graph; a network that cannot be one graph overrides
    nn.Module.compile to compile its parts (VQAutoencoder does). Whole networks, not blocks:
    compiling every res block on its own (tried on an H100, 2026-12-06) ran the paper's UNet
    at batch 64 slower than eager, its per-block calls adding more host overhead than the
    fusion saved (docs/results.md). Shapes are static (dynamic=False): recompiling for a new
    batch size beats shape-generic kernels. `backend` "aot_eager" traces without generating
    kernels (CPU tests).
    """
    raise_recompile_limits()
    module.compile(dynamic=False, backend=backend)
    return module


def raise_recompile_limits() -> None:
    """At least RECOMPILE_LIMIT graphs per code object, and 4x that in all (the names
    changed in torch 2.7: cache_size_limit -> recompile_limit)."""
    config = torch._dynamo.config
    for new, old, limit in (("recompile_limit", "cache_size_limit", RECOMPILE_LIMIT),
                            ("accumulated_recompile_limit", "accumulated_cache_size_limit", 4 * RECOMPILE_LIMIT)):
        name = new if hasattr(config, new) else old
        setattr(config, name, max(getattr(config, name), limit))


def use_fused_step(optimizer: torch.optim.Optimizer) -> None:
    """Adam and AdamW step with one fused kernel for all parameters instead of the default
    multi-tensor passes (torch's `fused=True`; the same update up to rounding). Call before
    the optimiser has state: a resumed checkpoint then brings back the same setting."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        for group in optimizer.param_groups:
            group["foreach"], group["fused"] = False, True


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor in NHWC (the layout of channels_last modules); others as they are."""
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor
