# FID (the paper's Table 1) and the t-SNE of Inception features (Fig. 6).

FID = config["fid"]


rule fid_reference:
    """Inception features of the real data (both modalities), shared by every variant."""
    input:
        rules.preprocess.output[0],
    output:
        "results/fid/reference_features.npz",
    log:
        "logs/fid_reference.log",
    benchmark:
        "benchmarks/out/fid_reference.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        # the reference's own settings: the generated side's (num_generated, ...) do not rerun it
        settings=json.dumps(
            {key: FID[key] for key in ("reference_split", "num_reference", "weights", "batch_size")}, sort_keys=True
        ),
        seed=config["seed"],
    shell:
        "wavediffusion fid-reference --dataset {input} --settings {params.settings:q} --seed {params.seed}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule fid_variant:
    """FID of one variant's generated pairs and of its Stage-1 random latents, per modality; t-SNE figures."""
    input:
        manifest=rules.gather_samples.output[0],
        store=rules.create_pairs_store.output[0],
        stage1_model=rules.train_stage1.output.model,
        latents=rules.encode_latents.output[0],
        reference=rules.fid_reference.output[0],
    output:
        table="results/fid/{variant}/fid.csv",
        tsne_seismic=report(
            "results/fid/{variant}/tsne_seismic.png",
            caption="../report/tsne.rst",
            category="6 FID",
            subcategory="{variant}",
            labels={"result": "t-SNE, seismic"},
        ),
        tsne_velocity=report(
            "results/fid/{variant}/tsne_velocity.png",
            caption="../report/tsne.rst",
            category="6 FID",
            subcategory="{variant}",
            labels={"result": "t-SNE, velocity"},
        ),
    log:
        "logs/fid_variant/{variant}.log",
    benchmark:
        "benchmarks/out/fid_variant/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        settings=json.dumps(FID, sort_keys=True),
        seed=config["seed"],
    shell:
        "wavediffusion fid-variant --variant {wildcards.variant} --store {input.store}"
        " --stage1-model {input.stage1_model} --latents {input.latents} --reference {input.reference}"
        " --settings {params.settings:q} --seed {params.seed} --threads {threads} --out {output.table}"
        " --tsne-seismic {output.tsne_seismic} --tsne-velocity {output.tsne_velocity} > {log} 2>&1"


rule sampler_fid:
    """FID of each sampler setting of the trajectory run (DDPM, DDIM, DPM-Solver++), beside its deviation and speed."""
    input:
        final_latents=rules.diffusion_trajectory.output.final_latents,
        ddim=rules.diffusion_trajectory.output.ddim,
        stage1_model=rules.train_stage1.output.model,
        latents=rules.encode_latents.output[0],
        reference=rules.fid_reference.output[0],
    output:
        table=report(
            "results/fid/{variant}/samplers.csv",
            caption="../report/sampler_fid.rst",
            category="6 FID",
            subcategory="{variant}",
            labels={"result": "FID per sampler (table)"},
        ),
        figure=report(
            "results/fid/{variant}/samplers.png",
            caption="../report/sampler_fid_figure.rst",
            category="6 FID",
            subcategory="{variant}",
            labels={"result": "FID per sampler"},
        ),
    log:
        "logs/sampler_fid/{variant}.log",
    benchmark:
        "benchmarks/out/sampler_fid/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    params:
        # only what this rule uses: editing fid.num_generated or num_baseline does not rerun it
        settings=json.dumps({key: FID[key] for key in ("weights", "batch_size")}, sort_keys=True),
        seed=config["seed"],
    shell:
        "wavediffusion sampler-fid --variant {wildcards.variant} --final-latents {input.final_latents}"
        " --ddim {input.ddim} --stage1-model {input.stage1_model} --latents {input.latents}"
        " --reference {input.reference} --settings {params.settings:q} --seed {params.seed} --threads {threads}"
        " --out {output.table} --figure {output.figure} > {log} 2>&1"


rule fid_table:
    """results/fid_table.csv: every variant's FID rows in one table."""
    input:
        expand(rules.fid_variant.output.table, variant=VARIANTS),
    output:
        report(
            "results/fid_table.csv",
            caption="../report/fid_table.rst",
            category="6 FID",
            subcategory="All variants",
            labels={"result": "FID (Table 1)"},
        ),
    log:
        "logs/fid_table.log",
    benchmark:
        "benchmarks/out/fid_table.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "wavediffusion combine-tables {input} --out {output} > {log} 2>&1"
