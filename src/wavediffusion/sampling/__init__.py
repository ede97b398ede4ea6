"""Sampling generated (seismic, velocity) pairs shard by shard, and their physics check.

`shard` holds the jobs: `sample_shard`, `check_shard` and `gather`; `physics_filter` the
valid mask and its report; `export` the accepted pairs in OpenFWI's file layout. The store
they write (its layout and per-shard completion markers) is `data.pairs_store`.
"""
