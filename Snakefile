# WaveDiffusion workflow. Thin on purpose: config, validation, includes, `rule all`.
# Each step is one rule in workflow/rules/<stage>.smk whose shell is one
# `wavediffusion <command>` call (src/wavediffusion/cli.py).

from wavediffusion.config import validate_config


configfile: "config.yaml"


config = validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/physics.smk"


rule all:
    input:
        "results/data/dataset.zarr",
        "results/physics/pde_floor.csv",
        "results/figures/velocity_families.png",
