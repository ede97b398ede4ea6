# Helpers shared by every stage: where each family's OpenFWI-layout data comes from, config
# slices as JSON (every rule file's `json`), the training launch and resources. Later rule
# files name earlier rules' outputs (rules.preprocess.output[0]), never their paths again.

import json
import os

from wavediffusion.data.families import get_family
from wavediffusion.evaluation.arms import ExperimentSettings, arm_names, parse_arm  # no torch: see arms.py

DATA = config["data"]
# the forward operator of every PDE deviation measured (evaluation, trajectory, checks)
PHYSICS_BACKEND = config["physics"]["backend"]


def openfwi_root():
    """The folder holding the families in OpenFWI's native layout, for the configured source."""
    if DATA["source"] == "embedded":
        return "results/embedded/openfwi"
    if DATA["openfwi_root"]:
        return DATA["openfwi_root"]
    return "results/openfwi/download"


def family_inputs():
    """What preprocess waits for, per family: the folder (simulated or a local copy), or
    the record a complete download writes (the folder itself is not a download output, so
    a failed download keeps its partial files for the retry to resume)."""
    folders = [f"{openfwi_root()}/{get_family(name).directory}" for name in DATA["families"]]
    if DATA["source"] == "openfwi" and not DATA["openfwi_root"]:
        return [f"{folder}/download.json" for folder in folders]
    return folders


def synthetic_seed(family_dir):
    """The generator seed for a synthetic family; 0 (unused) for families with real maps."""
    family = get_family(family_dir.replace("_", "-"))
    return DATA["embedded"]["synthetic_seed"] if family.embedded == "synthetic" else 0


def root_of(family_input):
    """The OpenFWI root above a family input (a family folder or its download.json)."""
    folder = os.path.dirname(family_input) if family_input.endswith("download.json") else family_input
    return os.path.dirname(folder)


def training_launch(stage):
    """The command that starts `wavediffusion` in a training job, one process per GPU.

    config <stage>.gpus (per node) and <stage>.nodes: 1 GPU runs the command itself; several
    GPUs on one node go through torchrun (one process per GPU); several nodes through srun
    with one task per GPU (the training loop reads its rank and the rendezvous on the first
    node from srun's environment). The loop's batch size is global, so the optimisation is
    the same on any number of GPUs. On a machine without GPUs, gpus > 1 starts that many CPU
    processes (gloo) -- the tests use this.
    """
    gpus, nodes = config[stage]["gpus"], config[stage]["nodes"]
    if nodes > 1:
        return f"srun --nodes {nodes} --ntasks-per-node {gpus} --gpus-per-task 1 wavediffusion"
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m wavediffusion.cli"
    return "wavediffusion"


def training_threads(stage):
    """The threads (SLURM: CPUs per task) of a training job: per process, one for the loop and
    one per DataLoader worker its config asks for (<stage>.training.num_workers; inversionnet:
    the most of training, finetune_training and real_training), and at least 2 like the other
    rules (on a CPU the loop's own torch ops are the work). On one node torchrun's processes
    share the job's one task, so it gets theirs together; over several nodes each process is
    a task of its own (srun) and gets its own."""
    section = config[stage]
    runs = [section["training"], *(section.get(key, {}) for key in ("finetune_training", "real_training"))]
    workers = max(run.get("num_workers", section["training"].get("num_workers", 0)) for run in runs)
    processes = section["gpus"] if section["nodes"] == 1 else 1
    return max(2, workers + 1) * processes


def training_resources(stage):
    """SLURM resources of a training job: all its GPUs and its nodes; over several nodes
    also one task per GPU, started by the job's own srun (with `mpi` the SLURM plugin
    does not wrap the job in `srun -n1`, and `tasks_per_gpu` keeps it from deriving
    --ntasks-per-gpu from `tasks`)."""
    gpus, nodes = config[stage]["gpus"], config[stage]["nodes"]
    resources = {"gpu": gpus * nodes, "nodes": nodes}
    if nodes > 1:
        resources.update(tasks=gpus * nodes, tasks_per_gpu=1, mpi="srun")
    return resources


# The inversion experiments (workflow/rules/inversion.smk). The science of the experiments
# is config inversionnet without the jobs' GPU counts, which stay out of their params.
INVERSION = {key: value for key, value in config["inversionnet"].items() if key not in ("gpus", "nodes")}
VARIANTS = config["stage1"]["variants"]
ARMS = arm_names(VARIANTS, ExperimentSettings.from_dict(INVERSION))
# every arm runs once per seed; the first seed's `real` model is the one that picks the
# hardest pairs and that the refinement compares with (REAL_INVERSIONNET)
SEEDS = INVERSION["seeds"]
HARD_SETS = [f"{variant}-{seismic}" for variant in VARIANTS for seismic in INVERSION["seismic"]]


def inversion_slice(*keys):
    """The keys of config inversionnet that a job depends on (its params), so that editing another key does not rerun it."""
    return json.dumps({key: INVERSION[key] for key in keys}, sort_keys=True)


def arm_inputs(wildcards):
    """What one run of an arm trains on: the dataset, and the pairs store, `real`'s weights of
    the same seed, the hardest-pairs split and the physics filter's mask when the arm uses them."""
    arm = parse_arm(wildcards.arm)
    inputs = {"dataset": rules.preprocess.output[0]}
    if arm.variant:
        inputs["store"] = rules.create_pairs_store.output[0].format(variant=arm.variant)
        inputs["manifest"] = rules.gather_samples.output[0].format(variant=arm.variant)
    if arm.draw:  # the filter's report rule writes its mask (`valid`) into the store
        inputs["filter_report"] = rules.physics_report.output.report.format(variant=arm.variant)
    if arm.finetune:
        inputs["init_weights"] = rules.train_inversionnet.output.model.format(arm="real", seed=wildcards.seed)
    if arm.finetune and arm.variant:
        inputs["hard"] = rules.hardest_generated.output[0].format(hard_set=f"{arm.variant}-{arm.seismic}")
    return inputs


def optional_argument(flag, name):
    """`--flag {input.name}` when the arm has that input, else nothing."""
    return lambda wildcards, input: f"{flag} {input[name]}" if name in input.keys() else ""


def hard_tests(wildcards):
    """Table 4's arms (and `real`, their starting point) are also measured on every hardest-pairs test set."""
    if wildcards.arm not in ("real", *ARMS["table4"]):
        return {}
    return {f"hard_{name}": rules.hardest_generated.output[0].format(hard_set=name) for name in HARD_SETS}


def hard_test_arguments(wildcards, input):
    """`--hard-test NAME,STORE,NPZ` for each hardest-pairs test set the arm is measured on."""
    arguments = []
    for name in HARD_SETS:
        if f"hard_{name}" in input.keys():
            store = rules.create_pairs_store.output[0].format(variant=name.rsplit("-", 1)[0])
            arguments.append(f"--hard-test {name},{store},{input[f'hard_{name}']}")
    return " ".join(arguments)
