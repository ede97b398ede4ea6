"""Names of the stores' axes, written as each Zarr array's `dimension_names`: xarray reads
them as dims (xr.open_zarr refuses a Zarr v3 array without them). An axis has one name in
the dataset, latents and pairs stores, and two axes of different sizes never share one.
"""

SAMPLE = "sample"  # the rows of the dataset and latents stores: one map (and its seismic) each
PAIR = "pair"  # the rows of the pairs store: one generated pair each
SEISMIC = ("shot", "time", "receiver")  # OpenFWI's shots, time samples, receivers (resized)
VELOCITY = ("velocity_channel", "depth", "lateral")  # one channel; grid rows (depth), columns (resized)
NATIVE_VELOCITY = ("velocity_channel", "native_depth", "native_lateral")  # OpenFWI's own 70 x 70 grid
LATENT = ("latent_channel", "latent_row", "latent_column")
