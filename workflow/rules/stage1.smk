# Stage 1: the shared-latent VQ autoencoder, one model per variant (1vq, 2vq).


wildcard_constraints:
    variant="1vq|2vq",


rule train_stage1:
    """Train the VQ autoencoder of one variant; a rerun after a crash resumes from its checkpoints."""
    input:
        rules.preprocess.output[0],
    output:
        model="results/stage1/{variant}/model.pt",
        record="results/stage1/{variant}/train.json",
    log:
        "logs/train_stage1/{variant}.log",
    benchmark:
        "benchmarks/out/train_stage1/{variant}.tsv"
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
        # sort_keys: the same settings always give the same string, whatever the YAML key order
        settings=json.dumps(
            {key: config["stage1"][key] for key in ("model", "discriminator", "losses", "training")}, sort_keys=True
        ),
    shell:
        "{params.launch} train-stage1 --dataset {input} --variant {wildcards.variant} --settings {params.settings:q}"
        " --threads {threads} --out {output.model} --record {output.record} > {log} 2>&1"


rule encode_latents:
    """The train and val splits as latents of one variant's autoencoder: Stage 2's data."""
    input:
        model=rules.train_stage1.output.model,
        dataset=rules.preprocess.output[0],
    output:
        directory("results/stage1/{variant}/latents.zarr"),
    log:
        "logs/encode_latents/{variant}.log",
    benchmark:
        "benchmarks/out/encode_latents/{variant}.tsv"
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


rule evaluate_stage1:
    """Reconstruction, inversion metrics and PDE deviation per family; Table 5's Stage-1 rows; examples."""
    input:
        model=rules.train_stage1.output.model,
        dataset=rules.preprocess.output[0],
        latents=rules.encode_latents.output[0],
    output:
        metrics="results/stage1/{variant}/metrics.csv",
        table5="results/stage1/{variant}/table5.csv",
        figure=report(
            "results/stage1/{variant}/examples.png",
            caption="../report/stage1_examples.rst",
            category="3 Stage 1",
            subcategory="{variant}",
            labels={"result": "reconstructions"},
        ),
    log:
        "logs/evaluate_stage1/{variant}.log",
    benchmark:
        "benchmarks/out/evaluate_stage1/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        settings=json.dumps({**config["stage1"]["evaluation"], "backend": PHYSICS_BACKEND}, sort_keys=True),
    shell:
        "wavediffusion evaluate-stage1 --model {input.model} --dataset {input.dataset} --latents {input.latents}"
        " --settings {params.settings:q} --threads {threads}"
        " --metrics {output.metrics} --table5 {output.table5} --figure {output.figure} > {log} 2>&1"


rule stage1_metrics:
    """Every variant's Stage-1 metrics in one table."""
    input:
        expand(rules.evaluate_stage1.output.metrics, variant=VARIANTS),
    output:
        report(
            "results/stage1/metrics.csv",
            caption="../report/stage1_metrics.rst",
            category="3 Stage 1",
            subcategory="All variants",
            labels={"result": "Stage-1 metrics"},
        ),
    log:
        "logs/stage1_metrics.log",
    benchmark:
        "benchmarks/out/stage1_metrics.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "wavediffusion combine-tables {input} --out {output} > {log} 2>&1"
