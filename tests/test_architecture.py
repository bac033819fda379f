"""The package's layer order (docs/ARCHITECTURE.md, "Layers"): no module imports from a layer above it.

Imports inside functions count too. A layer may import from itself and from the layers below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sharewise"

# lowest first; the first name of a dotted module path decides its layer
LAYERS = [
    {"errors", "files", "plotting"},
    {"layers"},
    {"metrics", "seeding", "cost"},
    {"config"},
    {"tasks"},
    {"data"},
    {"backbones"},
    {"methods"},
    {"report"},
    {"engine"},
    {"api", "export", "demo"},
    {"cli", "__main__"},
]


def _layer(top: str) -> int:
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"sharewise.{top} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md")


def _imports(path: Path) -> set[str]:
    """The sharewise modules ``path`` imports, as paths relative to the package (``engine.trainer``)."""
    relative = path.relative_to(PACKAGE).with_suffix("")
    package = list(relative.parts[:-1])  # the package a module (or an __init__.py) belongs to
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:  # ``from . import x``: x is a module of the package
                    found.update(".".join([*target, a.name]) for a in node.names)
                    continue
                found.add(".".join(target))
            elif node.module and node.module.split(".")[0] == "sharewise":
                found.add(".".join(node.module.split(".")[1:]))
        elif isinstance(node, ast.Import):
            found.update(".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "sharewise")
    return {f for f in found if f}


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_imports_from_a_layer_above_it(path):
    relative = path.relative_to(PACKAGE)
    if relative.name == "__init__.py" and len(relative.parts) == 1:
        return  # the package itself: the public API, above everything
    own = _layer(relative.with_suffix("").parts[0])
    upward = sorted(m for m in _imports(path) if m.split(".")[0] != "__version__" and _layer(m.split(".")[0]) > own)
    assert not upward, f"{relative} imports {upward}, above its layer ({sorted(LAYERS[own])})"


def test_the_check_sees_relative_and_lazy_imports(tmp_path, monkeypatch):
    """The guard itself: an upward import inside a function, written relatively, is found."""
    fake = PACKAGE / "methods" / "hard.py"
    source = fake.read_text() + "\n\ndef _late():\n    from ..engine.checkpoint import load_checkpoint\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else Path.read_bytes(self).decode())
    assert "engine.checkpoint" in _imports(fake)
    with pytest.raises(AssertionError, match="engine.checkpoint"):
        test_no_module_imports_from_a_layer_above_it(fake)


def test_no_method_imports_the_engine():
    for path in (PACKAGE / "methods").rglob("*.py"):
        assert not any(m.split(".")[0] == "engine" for m in _imports(path)), path
