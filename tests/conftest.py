"""Shared test fixtures: paths, the repository root, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from wavediffusion.config import SCHEMA as PACKAGE_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SCHEMA = PACKAGE_SCHEMA  # shipped with the package

# One thread: tiny tensors gain nothing from two, and two OpenMP threads on a shared
# 2-core machine can spin-wait each other into 10x slowdowns.
torch.set_num_threads(1)

# The tests run GPU steps on the CPU: a cluster user's WAVEDIFFUSION_REQUIRE_GPU=1 would refuse them.
os.environ.pop("WAVEDIFFUSION_REQUIRE_GPU", None)


def pytest_collection_modifyitems(config, items):
    """GPU tests run on the device machine only."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo() -> Path:
    return REPO
