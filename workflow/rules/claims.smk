# The paper's claims, tested on the run's own result tables.


rule claims:
    """results/claims.csv: one row per claim and variant (measured, paper, held: yes / no / not testable at this scale)."""
    input:
        table5=expand(rules.diffusion_trajectory.output.table5, variant=VARIANTS),
        deviation=expand(rules.diffusion_trajectory.output.deviation, variant=VARIANTS),
        memorisation=expand(rules.memorisation.output.table, variant=VARIANTS),
        stage1_records=expand(rules.train_stage1.output.record, variant=VARIANTS),
        stage2_records=expand(rules.train_stage2.output.record, variant=VARIANTS),
        fid=rules.fid_table.output[0],
        stage1_metrics=rules.stage1_metrics.output[0],
        table2=rules.inversionnet_tables.output.table2,
        inversion_records=expand(rules.train_inversionnet.output.record, arm="real", seed=SEEDS),
        table3=rules.inversionnet_tables.output.table3,
        table4=rules.inversionnet_tables.output.table4,
        table8=TABLE8_TARGETS[:1],  # results/ablation/table8.csv, when ablation.table8 is on
    output:
        report(
            "results/claims.csv",
            caption="../report/claims.rst",
            category="1 Claims",
            subcategory="All variants",
            labels={"result": "the paper's claims"},
        ),
    log:
        "logs/claims.log",
    benchmark:
        "benchmarks/out/claims.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        variants=VARIANTS,
        table8=lambda wildcards, input: f"--table8 {input.table8}" if input.table8 else "",
    shell:
        "wavediffusion claims --variants {params.variants} --table5 {input.table5} --deviation {input.deviation}"
        " --memorisation {input.memorisation} --stage1-records {input.stage1_records}"
        " --stage2-records {input.stage2_records} --fid {input.fid}"
        " --stage1-metrics {input.stage1_metrics} --table2 {input.table2}"
        " --inversion-records {input.inversion_records} --table3 {input.table3} --table4 {input.table4}"
        " {params.table8}"
        " --out {output} > {log} 2>&1"
