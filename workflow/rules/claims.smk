# The paper's claims, tested on the run's own result tables.


rule claims:
    """results/claims.csv: one row per claim and variant (measured, paper, held: yes / no / not testable at this scale)."""
    input:
        table5=expand("results/trajectory/{variant}/table5.csv", variant=VARIANTS),
        deviation=expand("results/trajectory/{variant}/deviation.csv", variant=VARIANTS),
        memorisation=expand("results/samples/{variant}/memorisation.csv", variant=VARIANTS),
        stage1_records=expand("results/stage1/{variant}/train.json", variant=VARIANTS),
        stage2_records=expand("results/stage2/{variant}/train.json", variant=VARIANTS),
        fid="results/fid_table.csv",
        stage1_metrics="results/stage1/metrics.csv",
        table2="results/inversionnet/table2.csv",
        inversion_record="results/inversionnet/real/train.json",
    output:
        "results/claims.csv",
    conda:
        "../../envs/wavediffusion.yaml"
    log:
        "logs/claims.log",
    params:
        variants=VARIANTS,
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "wavediffusion claims --variants {params.variants} --table5 {input.table5} --deviation {input.deviation}"
        " --memorisation {input.memorisation} --stage1-records {input.stage1_records}"
        " --stage2-records {input.stage2_records} --fid {input.fid}"
        " --stage1-metrics {input.stage1_metrics} --table2 {input.table2} --inversion-record {input.inversion_record}"
        " --out {output} > {log} 2>&1"
