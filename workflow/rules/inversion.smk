# The inversion experiments: InversionNet augmentation (Tables 2-4 and the physics filter's
# table, one job per arm and seed) and the diffusion-refined inversion (Tables 9 and 7). Arm
# names: evaluation/arms.py; INVERSION, ARMS, SEEDS, HARD_SETS and the input functions:
# workflow/rules/common.smk.


wildcard_constraints:
    arm=r"[\w.+-]+",
    seed=r"\d+",
    hard_set=r"[\w.]+-(decoded|simulated)",


rule train_inversionnet:
    """Train InversionNet for arm {arm} with seed {seed} (one run of an arm of Tables 2-4 or the filter's table)."""
    input:
        unpack(arm_inputs),
    output:
        model="results/inversionnet/{arm}/seed{seed}/model.pt",
        record="results/inversionnet/{arm}/seed{seed}/train.json",
    log:
        "logs/train_inversionnet/{arm}/seed{seed}.log",
    benchmark:
        "benchmarks/out/train_inversionnet/{arm}/seed{seed}.tsv"
    retries: 2
    conda:
        "../../envs/wavediffusion.yaml"
    threads: training_threads("inversionnet")  # its DataLoader workers + 1 (common.smk)
    resources:
        **training_resources("inversionnet"),
        mem_mb=32000,
        runtime=1440,
    params:
        settings=inversion_slice("model", "training", "finetune_training", "real_training", "generated_size"),
        seed=config["seed"],
        store=optional_argument("--store", "store"),
        hard=optional_argument("--hard", "hard"),
        init_weights=optional_argument("--init-weights", "init_weights"),
        launch=training_launch("inversionnet"),
    shell:
        "{params.launch} train-inversionnet --arm {wildcards.arm} --dataset {input.dataset} {params.store}"
        " {params.hard} {params.init_weights} --settings {params.settings:q} --seed {params.seed}"
        " --run-seed {wildcards.seed} --threads {threads} --record {output.record} --out {output.model} > {log} 2>&1"


# the real-data InversionNet of the first seed: the hardest pairs are those it predicts worst,
# and the refinement (Tables 9 and 7) is compared with it (Table 4's seed s starts from real's seed s)
REAL_INVERSIONNET = expand(rules.train_inversionnet.output.model, arm="real", seed=SEEDS[0])[0]


rule hardest_generated:
    """The generated pairs `real`'s first-seed InversionNet predicts worst, split to fine-tune and test (Table 4)."""
    input:
        model=REAL_INVERSIONNET,
        store=lambda wildcards: rules.create_pairs_store.output[0].format(variant=wildcards.hard_set.rsplit("-", 1)[0]),
        manifest=lambda wildcards: rules.gather_samples.output[0].format(variant=wildcards.hard_set.rsplit("-", 1)[0]),
    output:
        "results/inversionnet/hard/{hard_set}.npz",
    log:
        "logs/hardest_generated/{hard_set}.log",
    benchmark:
        "benchmarks/out/hardest_generated/{hard_set}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        settings=inversion_slice("hard_fraction", "hard_train_fraction", "eval_batch_size"),
        seed=config["seed"],
        seismic=lambda wildcards: wildcards.hard_set.rsplit("-", 1)[1],
    shell:
        "wavediffusion hardest-generated --model {input.model} --store {input.store} --seismic {params.seismic}"
        " --settings {params.settings:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_inversionnet:
    """MAE, RMSE and SSIM of arm {arm}, seed {seed}, per family on the real test split (and Table 4's hardest pairs)."""
    input:
        unpack(hard_tests),
        model=rules.train_inversionnet.output.model,
        record=rules.train_inversionnet.output.record,
        dataset=rules.preprocess.output[0],
    output:
        "results/inversionnet/{arm}/seed{seed}/metrics.csv",
    log:
        "logs/evaluate_inversionnet/{arm}/seed{seed}.log",
    benchmark:
        "benchmarks/out/evaluate_inversionnet/{arm}/seed{seed}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=1,
    params:
        settings=inversion_slice("eval_batch_size"),
        seed=config["seed"],
        hard_tests=hard_test_arguments,
    shell:
        "wavediffusion evaluate-inversionnet --model {input.model} --record {input.record} --dataset {input.dataset}"
        " {params.hard_tests} --settings {params.settings:q} --seed {params.seed} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule inversionnet_tables:
    """Tables 2-4 and the filter's (mean, std over seeds) from every run's metrics; Fig. 9 of the first seed's runs."""
    input:
        metrics=expand(rules.evaluate_inversionnet.output[0], arm=sum(ARMS.values(), []), seed=SEEDS),
        models=expand(rules.train_inversionnet.output.model, arm=ARMS["table2"], seed=SEEDS[0]),
        dataset=rules.preprocess.output[0],
    output:
        table2=report(
            "results/inversionnet/table2.csv",
            caption="../report/table2.rst",
            category="7 Inversion",
            subcategory="InversionNet augmentation",
            labels={"result": "Table 2"},
        ),
        table3=report(
            "results/inversionnet/table3.csv",
            caption="../report/table3.rst",
            category="7 Inversion",
            subcategory="InversionNet augmentation",
            labels={"result": "Table 3"},
        ),
        table4=report(
            "results/inversionnet/table4.csv",
            caption="../report/table4.rst",
            category="7 Inversion",
            subcategory="InversionNet augmentation",
            labels={"result": "Table 4"},
        ),
        table_filter=report(
            "results/inversionnet/table_filter.csv",
            caption="../report/table_filter.rst",
            category="7 Inversion",
            subcategory="InversionNet augmentation",
            labels={"result": "the physics filter's table"},
        ),
        per_seed="results/inversionnet/per_seed.csv",
        figure=report(
            "results/inversionnet/predictions.png",
            caption="../report/inversionnet_predictions.rst",
            category="7 Inversion",
            subcategory="InversionNet augmentation",
            labels={"result": "predictions (Fig. 9)"},
        ),
    log:
        "logs/inversionnet_tables.log",
    benchmark:
        "benchmarks/out/inversionnet_tables.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "wavediffusion inversionnet-tables --metrics {input.metrics} --models {input.models} --dataset {input.dataset}"
        " --threads {threads} --table2 {output.table2} --table3 {output.table3} --table4 {output.table4}"
        " --table-filter {output.table_filter} --per-seed {output.per_seed} --figure {output.figure} > {log} 2>&1"


rule refine_inversion:
    """Diffusion-refined inversion of the test seismic for one variant, beside Stage 1 alone, InversionNet and the perturbation ablation."""
    input:
        stage1_model=rules.train_stage1.output.model,
        stage2_model=rules.train_stage2.output.model,
        inversionnet=REAL_INVERSIONNET,
        dataset=rules.preprocess.output[0],
    output:
        table9="results/refine/{variant}/table9.csv",
        table7="results/refine/{variant}/table7.csv",
        info="results/refine/{variant}/info.json",
        figure=report(
            "results/refine/{variant}/examples.png",
            caption="../report/refine_examples.rst",
            category="7 Inversion",
            subcategory="Diffusion-refined inversion",
            labels={"result": "examples, {variant}"},
        ),
    log:
        "logs/refine_inversion/{variant}.log",
    benchmark:
        "benchmarks/out/refine_inversion/{variant}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=32000,
        runtime=720,
        gpu=1,
    params:
        settings=json.dumps(config["refine"], sort_keys=True),
        seed=config["seed"],
    shell:
        "wavediffusion refine-inversion --variant {wildcards.variant} --stage1-model {input.stage1_model}"
        " --stage2-model {input.stage2_model} --inversionnet {input.inversionnet} --dataset {input.dataset}"
        " --settings {params.settings:q} --seed {params.seed} --threads {threads} --table9 {output.table9}"
        " --table7 {output.table7} --info {output.info} --figure {output.figure} > {log} 2>&1"


rule refine_table9:
    """results/refine/table9.csv: every variant's Table-9 rows."""
    input:
        expand(rules.refine_inversion.output.table9, variant=VARIANTS),
    output:
        report(
            "results/refine/table9.csv",
            caption="../report/table9.rst",
            category="7 Inversion",
            subcategory="Diffusion-refined inversion",
            labels={"result": "Table 9"},
        ),
    log:
        "logs/refine_table9.log",
    benchmark:
        "benchmarks/out/refine_table9.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "wavediffusion combine-tables {input} --out {output} > {log} 2>&1"


rule refine_table7:
    """results/refine/table7.csv: every variant's Table-7 rows (the perturbation ablation)."""
    input:
        expand(rules.refine_inversion.output.table7, variant=VARIANTS),
    output:
        report(
            "results/refine/table7.csv",
            caption="../report/table7.rst",
            category="7 Inversion",
            subcategory="Diffusion-refined inversion",
            labels={"result": "Table 7"},
        ),
    log:
        "logs/refine_table7.log",
    benchmark:
        "benchmarks/out/refine_table7.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "wavediffusion combine-tables {input} --out {output} > {log} 2>&1"
