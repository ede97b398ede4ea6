# Sampling: N generated pairs per variant into one sharded Zarr store, each shard one job
# (one GPU on a cluster), each shard then checked against the wave equation.

from wavediffusion.data.pairs_store import num_shards  # no torch: the Snakefile imports it

SAMPLING = config["sampling"]
SHARDS = range(num_shards(SAMPLING["num_pairs"], SAMPLING["shard_size"]))


wildcard_constraints:
    shard=r"\d+",


rule create_pairs_store:
    """The empty store, created once before any shard writes (a settings edit recreates it, so every shard reruns); its completion markers go beside it, in pairs.zarr.done/."""
    input:
        stage1_model=rules.train_stage1.output.model,
        dataset=rules.preprocess.output[0],
    output:
        directory("results/samples/{variant}/pairs.zarr"),
    log:
        "logs/create_pairs_store/{variant}.log",
    benchmark:
        "benchmarks/out/create_pairs_store/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        settings=json.dumps(SAMPLING, sort_keys=True),
        seed=config["seed"],
    shell:
        "wavediffusion create-pairs-store --stage1-model {input.stage1_model} --settings {params.settings:q}"
        " --seed {params.seed} --dataset {input.dataset} --out {output} > {log} 2>&1"


rule sample_shard:
    """Generate and decode shard {shard}: writes only its own Zarr shards; its record appears last."""
    input:
        stage1_model=rules.train_stage1.output.model,
        stage2_model=rules.train_stage2.output.model,
        store=rules.create_pairs_store.output[0],
    output:
        "results/samples/{variant}/shards/sample-{shard}.json",
    log:
        "logs/sample_shard/{variant}-{shard}.log",
    benchmark:
        "benchmarks/out/sample_shard/{variant}-{shard}.tsv"
    retries: 1
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        settings=json.dumps(SAMPLING, sort_keys=True),
        seed=config["seed"],
    shell:
        "wavediffusion sample-shard --stage1-model {input.stage1_model} --stage2-model {input.stage2_model}"
        " --store {input.store} --shard {wildcards.shard} --settings {params.settings:q} --seed {params.seed}"
        " --threads {threads} --record {output} > {log} 2>&1"


rule check_shard:
    """The physics check of shard {shard}: F(decoded velocity) with physics.backend, stored beside the decoded seismic, and the PDE deviation."""
    input:
        sampled=rules.sample_shard.output[0],
        store=rules.create_pairs_store.output[0],
        dataset=rules.preprocess.output[0],
    output:
        "results/samples/{variant}/shards/check-{shard}.json",
    log:
        "logs/check_shard/{variant}-{shard}.log",
    benchmark:
        "benchmarks/out/check_shard/{variant}-{shard}.tsv"
    retries: 1
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        backend=PHYSICS_BACKEND,
        batch_size=config["physics"]["batch_size"],
        processes=config["physics"]["check_processes"],
    shell:
        "wavediffusion check-shard --store {input.store} --shard {wildcards.shard} --dataset {input.dataset}"
        " --backend {params.backend} --batch-size {params.batch_size} --processes {params.processes}"
        " --threads {threads} --record {output} > {log} 2>&1"


rule gather_samples:
    """manifest.json of one variant's pairs: counts, seeds, checkpoint hashes, sampler, deviation statistics."""
    input:
        sampled=expand(rules.sample_shard.output[0], shard=SHARDS, allow_missing=True),
        checked=expand(rules.check_shard.output[0], shard=SHARDS, allow_missing=True),
        store=rules.create_pairs_store.output[0],
    output:
        "results/samples/{variant}/manifest.json",
    log:
        "logs/gather_samples/{variant}.log",
    benchmark:
        "benchmarks/out/gather_samples/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "wavediffusion gather-samples --store {input.store} --out {output}"
        " --sample-records {input.sampled} --check-records {input.checked} > {log} 2>&1"


rule physics_report:
    """The physics filter (per family or absolute): `valid` and `family` in the store, acceptance per family, a histogram and the acceptance curve."""
    input:
        manifest=rules.gather_samples.output[0],
        store=rules.create_pairs_store.output[0],
        dataset=rules.preprocess.output[0],
        floor=rules.pde_floor.output.floor,
        true_pairs=rules.pde_floor.output.true_pairs,
    output:
        report=report(
            "results/samples/{variant}/physics_report.csv",
            caption="../report/physics_report.rst",
            category="5 Generated pairs",
            subcategory="{variant}",
            labels={"result": "physics filter per family"},
        ),
        figure=report(
            "results/samples/{variant}/deviation_histogram.png",
            caption="../report/deviation_histogram.rst",
            category="5 Generated pairs",
            subcategory="{variant}",
            labels={"result": "PDE deviation histogram"},
        ),
        acceptance=report(
            "results/samples/{variant}/acceptance.csv",
            caption="../report/acceptance.rst",
            category="5 Generated pairs",
            subcategory="{variant}",
            labels={"result": "acceptance vs threshold (table)"},
        ),
        acceptance_figure=report(
            "results/samples/{variant}/acceptance.png",
            caption="../report/acceptance_figure.rst",
            category="5 Generated pairs",
            subcategory="{variant}",
            labels={"result": "acceptance vs threshold"},
        ),
    log:
        "logs/physics_report/{variant}.log",
    benchmark:
        "benchmarks/out/physics_report/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,  # the family assignment reads every generated velocity map
    params:
        # the filter's keys and the floor's pair count only: the floor's batch size does not rerun it
        settings=json.dumps(
            {
                key: config["physics"][key]
                for key in (
                    "filter",
                    "max_deviation",
                    "family_quantile",
                    "family_multiple",
                    "floor_samples_per_family",
                )
            },
            sort_keys=True,
        ),
    shell:
        "wavediffusion physics-report --store {input.store} --variant {wildcards.variant}"
        " --settings {params.settings:q} --dataset {input.dataset} --threads {threads} --floor {input.floor}"
        " --true-pairs {input.true_pairs}"
        " --out {output.report} --figure {output.figure} --acceptance {output.acceptance}"
        " --acceptance-figure {output.acceptance_figure} > {log} 2>&1"


rule memorisation:
    """Does Stage 2 copy its training set? Generated vs held-out latents' distance to the nearest training latent."""
    input:
        manifest=rules.gather_samples.output[0],
        store=rules.create_pairs_store.output[0],
        latents=rules.encode_latents.output[0],
    output:
        table=report(
            "results/samples/{variant}/memorisation.csv",
            caption="../report/memorisation.rst",
            category="5 Generated pairs",
            subcategory="{variant}",
            labels={"result": "memorisation (table)"},
        ),
        figure=report(
            "results/samples/{variant}/memorisation.png",
            caption="../report/memorisation_figure.rst",
            category="5 Generated pairs",
            subcategory="{variant}",
            labels={"result": "memorisation"},
        ),
    log:
        "logs/memorisation/{variant}.log",
    benchmark:
        "benchmarks/out/memorisation/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=1,
    shell:
        "wavediffusion memorisation --variant {wildcards.variant} --store {input.store} --latents {input.latents}"
        " --threads {threads} --out {output.table} --figure {output.figure}"
        " > {log} 2>&1"


rule export_openfwi:
    """Accepted pairs in OpenFWI's own layout: model{n}.npy (m/s) and data{n}.npy simulated with deepwave."""
    input:
        report=rules.physics_report.output.report,
        store=rules.create_pairs_store.output[0],
        dataset=rules.preprocess.output[0],
    output:
        directory("results/export/{variant}/openfwi"),
    log:
        "logs/export_openfwi/{variant}.log",
    benchmark:
        "benchmarks/out/export_openfwi/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        settings=json.dumps(config["export"], sort_keys=True),
    shell:
        "wavediffusion export-openfwi --store {input.store} --dataset {input.dataset} --settings {params.settings:q}"
        " --threads {threads} --out {output} > {log} 2>&1"
