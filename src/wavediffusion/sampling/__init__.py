"""Sampling generated (seismic, velocity) pairs shard by shard, and their physics check.

`store` holds the layout of the pairs store (one Zarr v3 group; every sampling shard owns
whole Zarr shards of it) and its per-shard completion markers; `shard` holds the jobs:
`sample_shard`, `check_shard` and `gather`; `physics_filter` the valid mask and its report;
`export` the accepted pairs in OpenFWI's file layout.

Import from the modules themselves: this file imports nothing, so that the Snakefile's
`wavediffusion.sampling.store` import does not pull in torch (every Snakemake process,
each SLURM job's included, would pay for it).
"""
