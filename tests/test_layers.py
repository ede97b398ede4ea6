"""The library's layers, as the README's layout section draws them: a module imports only
from its own layer or the layers below it, never back up (function-level imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "wavediffusion"

# top-level module or package of wavediffusion -> its layer (0 = the ground)
LAYERS = {
    "files": 0, "seeds": 0, "devices": 0, "gpu_speed": 0, "metrics": 0, "plotting": 0, "models": 0, "diffusion": 0,
    "data": 1, "pairs": 1,
    "physics": 2, "config": 2,
    "training": 3,
    "sampling": 4,
    "evaluation": 5,
    "steps": 6,
    "cli": 7, "__init__": 7,
}


def part_of(module: Path) -> str:
    """src/wavediffusion/data/store.py -> 'data'; src/wavediffusion/cli.py -> 'cli'."""
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_parts(module: Path) -> set[str]:
    """The top-level parts of wavediffusion that `module` imports, wherever in the file."""
    package = module.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # ('wavediffusion', 'data')
    parts = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package[: len(package) - node.level + 1]
                target = list(base) + (node.module.split(".") if node.module else [])
                names = [target] if node.module or len(target) > 1 else [[*target, a.name] for a in node.names]
            else:
                names = [node.module.split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        parts |= {name[1] for name in names if name[0] == "wavediffusion" and len(name) > 1}
    return parts


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(path) for path in PACKAGE.rglob("*.py")}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS and the README: {sorted(parts - set(LAYERS))}"


def test_no_import_runs_back_up():
    upward = []
    for module in sorted(PACKAGE.rglob("*.py")):
        source = part_of(module)
        for target in imported_parts(module):
            if LAYERS[target] > LAYERS[source]:
                upward.append(f"{module.relative_to(PACKAGE)} ({source}, layer {LAYERS[source]}) imports "
                              f"{target} (layer {LAYERS[target]})")
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_the_import_reader_sees_relative_and_lazy_imports(tmp_path):
    """The reader must see `from ..x import`, `from . import y` and imports inside functions,
    or the test above could pass by seeing nothing."""
    sampling = PACKAGE / "sampling" / "shard.py"
    assert {"data", "physics", "training"} <= imported_parts(sampling)
    assert "evaluation" in imported_parts(PACKAGE / "steps" / "fid.py")  # steps import their libraries lazily
