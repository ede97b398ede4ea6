"""The public Python API for generated pairs (wavediffusion.pairs), as the README shows it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from wavediffusion.data.pairs_store import open_pairs_store
from wavediffusion.pairs import GeneratedPairs
from wavediffusion.sampling.physics_filter import apply_physics_filter

from test_inversionnet import make_pairs

README = Path(__file__).resolve().parents[1] / "README.md"
README_STORE = "results/samples/1vq/pairs.zarr"


def readme_example() -> str:
    """The Python block of the README's section 'Generated pairs in Python'."""
    section = README.read_text().split("## Generated pairs in Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture
def filtered(tmp_path):
    """A tiny complete pairs store whose physics filter accepted the pairs below the median deviation."""
    store = tmp_path / "pairs.zarr"
    arrays = make_pairs(store, n=6, shard_size=2, seed=0)
    root = open_pairs_store(store)
    deviation = root["deviation"][:]
    apply_physics_filter(root, float(np.median(deviation)))
    return store, arrays, np.flatnonzero(deviation <= np.median(deviation))


def test_the_readme_example_loads_the_accepted_pairs(filtered):
    store, arrays, accepted = filtered
    example = readme_example()
    assert README_STORE in example and "accepted_only=True" in example
    namespace = {}
    exec(example.replace(README_STORE, str(store)), namespace)
    seismic, velocity = namespace["seismic"], namespace["velocity"]  # the last batch: here the only one
    assert len(namespace["pairs"]) == len(accepted) == 3
    assert tuple(seismic.shape) == (3, *arrays["seismic"].shape[1:]) and tuple(velocity.shape[1:]) == (1, 16, 16)
    rows = sorted(int(np.flatnonzero((arrays["velocity"] == v.numpy()).all(axis=(1, 2, 3)))[0]) for v in velocity)
    assert rows == accepted.tolist()  # shuffled, each accepted pair once
    # without the filter: every pair
    everything = namespace["GeneratedPairs"](str(store), accepted_only=False)
    assert len(everything) == 6


def test_accepted_only_needs_the_filter_and_picks_the_indices_itself(filtered, tmp_path):
    store, _, accepted = filtered
    assert GeneratedPairs(store, accepted_only=True).indices.tolist() == accepted.tolist()
    with pytest.raises(ValueError, match="give indices or accepted_only, not both"):
        GeneratedPairs(store, indices=[0], accepted_only=True)
    unfiltered = tmp_path / "unfiltered.zarr"
    make_pairs(unfiltered, n=4, shard_size=2, seed=1)
    with pytest.raises(RuntimeError, match="run the physics_report rule first"):
        GeneratedPairs(unfiltered, accepted_only=True)
