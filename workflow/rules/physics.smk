# Physics: the PDE-check floor every later deviation is read against.


rule pde_floor:
    """Deviation of the data set's own true pairs, per family and forward-modelling backend, and of each pair."""
    input:
        rules.preprocess.output[0],
    output:
        floor=report(
            "results/physics/pde_floor.csv",
            caption="../report/pde_floor.rst",
            category="2 Data",
            subcategory="PDE floor",
            labels={"result": "PDE deviation of the true pairs"},
        ),
        true_pairs="results/physics/true_pair_deviation.csv",
    log:
        "logs/pde_floor.log",
    benchmark:
        "benchmarks/out/pde_floor.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        samples_per_family=config["physics"]["floor_samples_per_family"],
        backends=config["physics"]["floor_backends"],
        batch_size=config["physics"]["batch_size"],
    shell:
        "wavediffusion pde-floor --dataset {input} --samples-per-family {params.samples_per_family}"
        " --backends {params.backends} --batch-size {params.batch_size} --threads {threads}"
        " --out {output.floor} --true-pairs {output.true_pairs} > {log} 2>&1"
