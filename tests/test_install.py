"""Installing the project into an environment that already has a torch keeps that torch
(README, 'Installing into an existing environment'): pip's own plan, read from
`pip install --dry-run --report`, for a fresh venv holding a real torch of an older release
than the newest the project accepts.

Slow (about a minute and a half) and needs PyPI, for the metadata of what pip would install;
it downloads no torch: the venv's torch is a wheel already on disk (pip's find-links, as
this project's machines have, or WAVEDIFFUSION_TEST_TORCH_WHEEL), and is skipped without one.
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

