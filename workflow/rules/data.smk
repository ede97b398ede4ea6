# Data: OpenFWI files (downloaded, a local copy, or the embedded source simulated here)
# -> the dataset Zarr store.


rule download_openfwi:
    """Fetch one OpenFWI family (resumable, verified) when no local copy is configured."""
    output:
        "results/openfwi/download/{family_dir}/download.json",
    log:
        "logs/download_openfwi/{family_dir}.log",
    benchmark:
        "benchmarks/out/download_openfwi/{family_dir}.tsv"
    retries: 2
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=2000,
        runtime=600,
    params:
        family=lambda wildcards: wildcards.family_dir.replace("_", "-"),
        base_url=DATA["download_base_url"] or "",
    shell:
        "wavediffusion download-openfwi --family {params.family} --dest results/openfwi/download"
        " --base-url '{params.base_url}' --record {output} > {log} 2>&1"


rule simulate:
    """Forward-model one family's embedded velocity maps into OpenFWI's native layout."""
    output:
        directory("results/embedded/openfwi/{family_dir}"),
    log:
        "logs/simulate/{family_dir}.log",
    benchmark:
        "benchmarks/out/simulate/{family_dir}.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        family=lambda wildcards: wildcards.family_dir.replace("_", "-"),
        train=DATA["embedded"]["train_per_family"],
        test=DATA["embedded"]["test_per_family"],
        # Only synthetic families depend on the generator's seed: a new seed must not
        # re-simulate the real maps.
        synthetic_seed=lambda wildcards: synthetic_seed(wildcards.family_dir),
        backend=DATA["embedded"]["backend"],
        batch_size=config["physics"]["batch_size"],
    shell:
        "wavediffusion simulate --family {params.family} --out-root results/embedded/openfwi"
        " --train {params.train} --test {params.test} --synthetic-seed {params.synthetic_seed}"
        " --backend {params.backend} --batch-size {params.batch_size} --threads {threads} > {log} 2>&1"


rule preprocess:
    """OpenFWI layout -> results/data/dataset.zarr (resized, log-transformed, normalised)."""
    input:
        family_inputs(),
    output:
        directory("results/data/dataset.zarr"),
    log:
        "logs/preprocess.log",
    benchmark:
        "benchmarks/out/preprocess.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        root=lambda wildcards, input: root_of(input[0]),
        source=DATA["source"],
        families=DATA["families"],
        max_train=DATA["max_train_per_family"],
        max_test=DATA["max_test_per_family"],
        val_fraction=DATA["val_fraction"],
        seed=config["seed"],
        shots=config["preprocess"]["shots"],
        time_samples=config["preprocess"]["time_samples"],
        receivers=config["preprocess"]["receivers"],
        velocity_size=config["preprocess"]["velocity_size"],
        samples_per_shard=config["preprocess"]["samples_per_shard"],
    shell:
        "wavediffusion preprocess --openfwi-root {params.root} --source {params.source}"
        " --families {params.families} --shots {params.shots}"
        " --time-samples {params.time_samples} --receivers {params.receivers}"
        " --velocity-size {params.velocity_size} --samples-per-shard {params.samples_per_shard}"
        " --max-train-per-family {params.max_train} --max-test-per-family {params.max_test}"
        " --val-fraction {params.val_fraction} --seed {params.seed} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule velocity_figure:
    """Figure: velocity maps of every family, real and synthetic side by side."""
    input:
        rules.preprocess.output[0],
    output:
        report(
            "results/figures/velocity_families.png",
            caption="../report/velocity_families.rst",
            category="2 Data",
            subcategory="Velocity maps",
            labels={"result": "velocity maps per family"},
        ),
    log:
        "logs/velocity_figure.log",
    benchmark:
        "benchmarks/out/velocity_figure.tsv"
    conda:
        "../../envs/wavediffusion.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "wavediffusion plot-velocity-families --dataset {input} --out {output} > {log} 2>&1"
