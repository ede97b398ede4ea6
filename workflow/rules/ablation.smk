# The paper's Table 8, joint vs separate diffusion: one autoencoder and one latent diffusion model per
# modality (the joint model's stage1 and stage2 settings), their samples paired by index, scored
# beside the joint model's pairs. config ablation.table8 turns it on (rule all) and sizes it.

from wavediffusion.evaluation.table8 import MODALITIES, Table8Settings  # no torch: the Snakefile imports it

TABLE8 = Table8Settings.from_dict(config["ablation"]["table8"])
# samples per modality: ablation.table8.num_samples, else the FID table's count (evaluation/table8.py)
TABLE8_SAMPLES = TABLE8.sample_count(config["fid"]["num_generated"], config["sampling"]["num_pairs"])


wildcard_constraints:
    modality="|".join(MODALITIES),


rule train_separate_stage1:
    """Train one modality's own VQ autoencoder (the joint model's architecture, losses and budget); resumes after a crash."""
    input:
        rules.preprocess.output[0],
    output:
        model="results/ablation/{modality}/stage1/model.pt",
        record="results/ablation/{modality}/stage1/train.json",
    log:
        "logs/train_separate_stage1/{modality}.log",
    benchmark:
        "benchmarks/out/train_separate_stage1/{modality}.tsv"
    retries: 1
    conda:
        "../../envs/wavediffusion.yaml"
    threads: training_threads("stage1")  # its DataLoader workers + 1 (common.smk)
    resources:
        **training_resources("stage1"),
        mem_mb=16000,
        runtime=24 * 60,
    params:
        launch=training_launch("stage1"),  # one process per GPU (common.smk)
        # the joint model's settings, as train_stage1 passes them
        settings=json.dumps(
            {key: config["stage1"][key] for key in ("model", "discriminator", "losses", "training")}, sort_keys=True
        ),
    shell:
        "{params.launch} train-separate-stage1 --dataset {input} --modality {wildcards.modality}"
        " --settings {params.settings:q} --threads {threads} --out {output.model} --record {output.record} > {log} 2>&1"


rule encode_separate_latents:
    """The train and val splits as latents of one modality's own autoencoder: its Stage-2 model's data."""
    input:
        model=rules.train_separate_stage1.output.model,
        dataset=rules.preprocess.output[0],
    output:
        directory("results/ablation/{modality}/stage1/latents.zarr"),
    log:
        "logs/encode_separate_latents/{modality}.log",
    benchmark:
        "benchmarks/out/encode_separate_latents/{modality}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    shell:
        "wavediffusion encode-latents --model {input.model} --dataset {input.dataset}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule train_separate_stage2:
    """Train one modality's own latent diffusion UNet (the joint model's stage2 settings); resumes after a crash."""
    input:
        rules.encode_separate_latents.output[0],
    output:
        model="results/ablation/{modality}/stage2/model.pt",
        record="results/ablation/{modality}/stage2/train.json",
    log:
        "logs/train_separate_stage2/{modality}.log",
    benchmark:
        "benchmarks/out/train_separate_stage2/{modality}.tsv"
    retries: 1
    conda:
        "../../envs/wavediffusion.yaml"
    threads: training_threads("stage2")  # its DataLoader workers + 1 (common.smk)
    resources:
        **training_resources("stage2"),
        mem_mb=16000,
        runtime=24 * 60,
    params:
        launch=training_launch("stage2"),  # one process per GPU (common.smk)
        settings=json.dumps({key: config["stage2"][key] for key in ("model", "diffusion", "training")}, sort_keys=True),
    shell:
        "{params.launch} train-stage2 --latents {input} --settings {params.settings:q}"
        " --threads {threads} --out {output.model} --record {output.record} > {log} 2>&1"


rule sample_separate:
    """Sample one modality from its own diffusion model with the joint pairs' sampler, seeded apart from the other modality."""
    input:
        stage1_model=rules.train_separate_stage1.output.model,
        stage2_model=rules.train_separate_stage2.output.model,
    output:
        directory("results/ablation/{modality}/samples.zarr"),
    log:
        "logs/sample_separate/{modality}.log",
    benchmark:
        "benchmarks/out/sample_separate/{modality}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        # the sampler keys only: the store's size (num_pairs, shard_size) does not rerun it
        settings=json.dumps(
            {key: SAMPLING[key] for key in ("sampler", "steps", "eta", "batch_size", "precision", "compile")},
            sort_keys=True,
        ),
        num_samples=TABLE8_SAMPLES,
        seed=config["seed"],
    shell:
        "wavediffusion sample-separate --stage1-model {input.stage1_model} --stage2-model {input.stage2_model}"
        " --settings {params.settings:q} --num-samples {params.num_samples} --seed {params.seed}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule check_independent_pairs:
    """The physics check of pairs made by index of the seismic-only and velocity-only samples; a figure beside joint pairs."""
    input:
        seismic=expand(rules.sample_separate.output[0], modality="seismic"),
        velocity=expand(rules.sample_separate.output[0], modality="velocity"),
        dataset=rules.preprocess.output[0],
        manifests=expand(rules.gather_samples.output[0], variant=VARIANTS),
        stores=expand(rules.create_pairs_store.output[0], variant=VARIANTS),
    output:
        table="results/ablation/independent_pairs.csv",
        figure=report(
            "results/ablation/pairs.png",
            caption="../report/table8_figure.rst",
            category="8 Joint vs separate",
            subcategory="All variants",
            labels={"result": "joint and independent pairs"},
        ),
    log:
        "logs/check_independent_pairs.log",
    benchmark:
        "benchmarks/out/check_independent_pairs.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        num_samples=TABLE8_SAMPLES,
        variants=VARIANTS,
        backend=PHYSICS_BACKEND,
        batch_size=config["physics"]["batch_size"],
    shell:
        "wavediffusion check-independent-pairs --seismic-samples {input.seismic} --velocity-samples {input.velocity}"
        " --num-samples {params.num_samples} --dataset {input.dataset} --variants {params.variants}"
        " --stores {input.stores} --backend {params.backend} --batch-size {params.batch_size} --threads {threads}"
        " --out {output.table} --figure {output.figure} > {log} 2>&1"


rule table8:
    """results/ablation/table8.csv: FID per modality and PDE deviation, joint pairs against independent pairs of separate models."""
    input:
        seismic=expand(rules.sample_separate.output[0], modality="seismic"),
        velocity=expand(rules.sample_separate.output[0], modality="velocity"),
        independent_pairs=rules.check_independent_pairs.output.table,
        manifests=expand(rules.gather_samples.output[0], variant=VARIANTS),
        stores=expand(rules.create_pairs_store.output[0], variant=VARIANTS),
        floor=rules.pde_floor.output.floor,
        reference=rules.fid_reference.output[0],
    output:
        report(
            "results/ablation/table8.csv",
            caption="../report/table8.rst",
            category="8 Joint vs separate",
            subcategory="All variants",
            labels={"result": "Table 8"},
        ),
    log:
        "logs/table8.log",
    benchmark:
        "benchmarks/out/table8.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        # the features' own settings: fid.num_generated enters through num_samples
        settings=json.dumps({key: FID[key] for key in ("weights", "batch_size")}, sort_keys=True),
        num_samples=TABLE8_SAMPLES,
        variants=VARIANTS,
        seed=config["seed"],
    shell:
        "wavediffusion table8 --variants {params.variants} --stores {input.stores} --seismic-samples {input.seismic}"
        " --velocity-samples {input.velocity} --num-samples {params.num_samples}"
        " --independent-pairs {input.independent_pairs} --floor {input.floor} --reference {input.reference}"
        " --settings {params.settings:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


# rule all's share: the table and its figure, while ablation.table8.enabled
TABLE8_TARGETS = [rules.table8.output[0], rules.check_independent_pairs.output.figure] if TABLE8.enabled else []
