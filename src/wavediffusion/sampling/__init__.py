"""Sampling generated (seismic, velocity) pairs shard by shard, and their physics check.

`store` holds the layout of the pairs store (one Zarr v3 group; every sampling shard owns
whole Zarr shards of it) and its per-shard completion markers; `shard` holds the jobs:
`sample_shard`, `check_shard` and `gather`; `physics_filter` the valid mask and its report;
`export` the accepted pairs in OpenFWI's file layout.
"""

from .export import ExportSettings, export_openfwi
from .physics_filter import apply_physics_filter, physics_report

from .shard import SamplingSettings, check_shard, create_store_for_models, gather, sample_shard, write_manifest
from .store import (
    ARRAYS,
    DONE_KINDS,
    clear_done,
    create_pairs_store,
    done_shards,
    is_done,
    mark_done,
    num_shards,
    open_pairs_store,
    read_done,
    shard_range,
)

__all__ = [
    "ARRAYS", "DONE_KINDS", "ExportSettings", "SamplingSettings", "apply_physics_filter", "export_openfwi",
    "physics_report", "check_shard", "clear_done", "create_pairs_store",
    "create_store_for_models", "done_shards", "gather", "is_done", "mark_done", "num_shards", "open_pairs_store",
    "read_done", "sample_shard", "shard_range", "write_manifest",
]
