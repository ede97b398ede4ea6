# WaveDiffusion workflow. Thin on purpose: config, validation, includes, report, localrules, `rule all`.
# Each step is one rule in workflow/rules/<stage>.smk whose shell is one
# `wavediffusion <command>` call (the command's function: src/wavediffusion/steps/<stage>.py).

import os
import sys

# Snakemake's own Python may lack the package (--sdm conda with a bare Snakemake, which then
# needs numpy beside it): parsing then imports this checkout's src/. An installed one comes first.
sys.path.append(os.path.join(workflow.basedir, "src"))

from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from wavediffusion.config import validate_config  # and its schema, config.schema.yaml beside it

# the Snakemake that pyproject.toml requires (>=9,<10) and the tests run: an older one stops here
min_version("9.0")

# Rules call the `wavediffusion` command installed beside the Python that runs Snakemake
# (.venv/bin after `make install`), also when that environment is not activated.
# Under --sdm conda the rule's conda environment provides it: the prefix runs inside the
# activated environment, so putting .venv/bin first there would bypass the environment.
PYTHON_BIN = os.path.dirname(sys.executable)
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
if not USE_CONDA and os.path.exists(os.path.join(PYTHON_BIN, "wavediffusion")):
    shell.prefix(f'set -euo pipefail; export PATH="{PYTHON_BIN}:$PATH"; ')


# A config file named on the command line (--configfile config/mini.yaml) REPLACES
# config.yaml instead of being merged into it: each scale's file stands alone (the schema
# fills in what it leaves out), so no demo value can leak into a mini or paper run.
# `--config key=value` still overrides single keys of whichever file is used, and a second
# file after the same flag is merged over the first (--configfile config.yaml more.yaml).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# Snakemake merges a nested --config mapping into its section but leaves each value in it as
# text ("10", "null"): validate_config reads those as values before checking them.
config = validate_config(config, overrides=workflow.config_settings.config)


onstart:
    # The jobs' own checks of every section (unknown keys under stage1.model, a sampler step
    # count beyond the schedule, ...), once before the first job: they need torch, which
    # parsing this file must not import. Skipped where Snakemake's own Python has no torch
    # (--sdm conda with a bare Snakemake): the jobs still check.
    import importlib.util, tempfile, yaml

    if importlib.util.find_spec("torch") is None:
        print("wavediffusion: no torch beside Snakemake; the config's sections are checked by the jobs only")
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="wavediffusion-config-") as checked:
            yaml.safe_dump(config, checked)
            checked.flush()
            shell(f"{sys.executable} -m wavediffusion.cli check-config {checked.name} --name 'the run config'")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/physics.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/fid.smk"
include: "workflow/rules/inversion.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/claims.smk"


# `snakemake --report report.zip`: the claims, tables and figures marked report() in the
# rules, each with its caption from workflow/report/, under this description.
report: "workflow/report/workflow.rst"


# Run where Snakemake runs (a cluster's login node), not as SLURM jobs: each takes seconds
# and one CPU, so queueing it would cost more than it does -- the combiners of small tables
# (stage1_metrics, fid_table, refine_table9/7, claims), the figure from a few maps
# (velocity_figure), the empty pairs store and the manifest from the shards' records
# (create_pairs_store, gather_samples) -- or it needs the internet, which compute nodes
# often lack (download_openfwi: network-bound, hours on one CPU).
localrules:
    download_openfwi,
    velocity_figure,
    stage1_metrics,
    create_pairs_store,
    gather_samples,
    fid_table,
    refine_table9,
    refine_table7,
    claims,


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
        rules.inversionnet_tables.output.table_filter,
        rules.refine_table9.output[0],
        rules.refine_table7.output[0],
        rules.claims.output[0],
        *TABLE8_TARGETS,  # ablation.table8.enabled (workflow/rules/ablation.smk)
