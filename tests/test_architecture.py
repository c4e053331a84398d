"""The layers of docs/architecture.md: imports only run downward, and private names stay home."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bids_qnet"

#: Each part of the package and its layer; a part imports only from lower layers (and itself).
LAYERS = {
    "__init__": 0,
    "errors": 0,
    "data": 1,
    "stats": 1,
    "models": 1,
    "outputs": 2,
    "inputs": 3,
    "preprocess": 3,
    "config": 4,
    "training": 4,
    "attribution": 5,
    "reports": 5,
    "workflows": 6,
    "demo": 6,
    "cli": 7,
}


def _part(module: str) -> str:
    """``bids_qnet.training.cv`` -> ``training``; ``bids_qnet`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else "__init__"


def _imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("bids_qnet"):
                    names = [alias.name for alias in node.names]
                    yield module, node.module, names
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("bids_qnet"):
                        yield module, alias.name, []


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts -= {"__pycache__"}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_imports_run_downward():
    upward = []
    for module, imported, _ in _imports():
        source, target = _part(module), _part(imported)
        if source != target and LAYERS[target] >= LAYERS[source]:
            upward.append(f"{module} -> {imported}")
    assert upward == []


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_no_private_name_crosses_a_module(part):
    crossing = [
        f"{module} imports {name} from {imported}"
        for module, imported, names in _imports()
        for name in names
        if name.startswith("_") and not name.startswith("__") and _part(module) == part
    ]
    assert crossing == []
