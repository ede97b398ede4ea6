# WaveDiffusion workflow. Thin on purpose: config, validation, includes, `rule all`.
# Each step is one rule in workflow/rules/<stage>.smk whose shell is one
# `wavediffusion <command>` call (src/wavediffusion/cli.py).

import os
import sys

from wavediffusion.config import validate_config

# Rules call the `wavediffusion` command installed beside the Python that runs Snakemake
# (.venv/bin after `make install`), also when that environment is not activated.
# Under --sdm conda it is absent there, and the rule's conda environment provides it.
PYTHON_BIN = os.path.dirname(sys.executable)
if os.path.exists(os.path.join(PYTHON_BIN, "wavediffusion")):
    shell.prefix(f'set -euo pipefail; export PATH="{PYTHON_BIN}:$PATH"; ')


# A config file named on the command line (--configfile config/mini.yaml) REPLACES
# config.yaml instead of being merged into it: each scale's file stands alone (the schema
# fills in what it leaves out), so no demo value can leak into a mini or paper run.
# `--config key=value` still overrides single keys of whichever file is used.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


config = validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/physics.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/fid.smk"
include: "workflow/rules/inversion.smk"
include: "workflow/rules/claims.smk"


rule all:
    input:
        rules.preprocess.output[0],
        rules.pde_floor.output.floor,
        rules.velocity_figure.output[0],
        rules.stage1_metrics.output[0],
        expand(rules.diffusion_trajectory.output.table5, variant=VARIANTS),
        expand(rules.physics_report.output.report, variant=VARIANTS),
        expand(rules.export_openfwi.output[0], variant=VARIANTS),
        rules.fid_table.output[0],
        expand(rules.sampler_fid.output.table, variant=VARIANTS),
        rules.inversionnet_tables.output.table2,
        rules.refine_table9.output[0],
        rules.refine_table7.output[0],
        rules.claims.output[0],
