# Stage 2: the latent diffusion model over one variant's latent space.


rule train_stage2:
    """Train the diffusion UNet (with an EMA of its weights) on one variant's training latents; resumes after a crash."""
    input:
        rules.encode_latents.output[0],
    output:
        model="results/stage2/{variant}/model.pt",
        record="results/stage2/{variant}/train.json",
    log:
        "logs/train_stage2/{variant}.log",
    benchmark:
        "benchmarks/out/train_stage2/{variant}.tsv"
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


rule diffusion_trajectory:
    """The paper's central experiment: PDE deviation of decoded latents along the forward and reverse diffusion, DDIM step counts, Table 5."""
    input:
        stage1_model=rules.train_stage1.output.model,
        stage2_model=rules.train_stage2.output.model,
        latents=rules.encode_latents.output[0],
        dataset=rules.preprocess.output[0],
        stage1_table5=rules.evaluate_stage1.output.table5,
    output:
        deviation="results/trajectory/{variant}/deviation.csv",
        table5=report(
            "results/trajectory/{variant}/table5.csv",
            caption="../report/table5.rst",
            category="4 Stage 2 trajectory",
            subcategory="{variant}",
            labels={"result": "Table 5"},
        ),
        ddim="results/trajectory/{variant}/ddim.csv",
        figure=report(
            "results/trajectory/{variant}/deviation.png",
            caption="../report/trajectory_deviation.rst",
            category="4 Stage 2 trajectory",
            subcategory="{variant}",
            labels={"result": "PDE deviation along the diffusion"},
        ),
        examples=report(
            "results/trajectory/{variant}/trajectory_examples.png",
            caption="../report/trajectory_examples.rst",
            category="4 Stage 2 trajectory",
            subcategory="{variant}",
            labels={"result": "decoded pairs along the diffusion"},
        ),
        final_latents="results/trajectory/{variant}/final_latents.npz",
    log:
        "logs/diffusion_trajectory/{variant}.log",
    benchmark:
        "benchmarks/out/diffusion_trajectory/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    params:
        settings=json.dumps({**config["stage2"]["trajectory"], "backend": PHYSICS_BACKEND}, sort_keys=True),
    shell:
        "wavediffusion diffusion-trajectory --stage1-model {input.stage1_model} --stage2-model {input.stage2_model}"
        " --latents {input.latents} --dataset {input.dataset} --stage1-table5 {input.stage1_table5}"
        " --settings {params.settings:q} --threads {threads} --deviation {output.deviation} --table5 {output.table5}"
        " --ddim {output.ddim} --figure {output.figure} --examples {output.examples}"
        " --final-latents {output.final_latents} > {log} 2>&1"
