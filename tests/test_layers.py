"""The package layout keeps data flowing one way: each layer imports only the layers below it.

Read from the source (ast), not by importing: a layer that imports a forbidden one only inside a
function or under TYPE_CHECKING still says it depends on it. The rules are docs/ARCHITECTURE.md's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "zmesh"

#: the only modules left at zmesh's top level (everything else lives in a package)
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "testing.py", "config.py"}

#: layer -> the zmesh modules/packages it may import (prefixes), and the outside modules it must not
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "zmesh.util": (("zmesh.util",), ("zmq", "lmdb")),
    "zmesh.protocol": (("zmesh.errors", "zmesh.protocol"), ("zmq", "lmdb", "zeroconf", "time")),
    "zmesh.core": (("zmesh.errors", "zmesh.protocol", "zmesh.core", "zmesh.store.base"),
                   ("zmq", "lmdb", "zeroconf", "time", "socket", "threading")),
    "zmesh.store": (("zmesh.errors", "zmesh.core.schema", "zmesh.store"), ("zmq", "zeroconf")),
    "zmesh.transport": (("zmesh.errors", "zmesh.protocol", "zmesh.transport"), ("lmdb",)),
    "zmesh.broker": (("zmesh.errors", "zmesh.protocol", "zmesh.core", "zmesh.store", "zmesh.transport", "zmesh.util",
                      "zmesh.config", "zmesh.discovery", "zmesh.__init__", "zmesh.broker"), ()),
    "zmesh.client": (("zmesh.errors", "zmesh.protocol", "zmesh.transport", "zmesh.discovery", "zmesh.client",
                      "zmesh.util"), ("lmdb",)),
    "zmesh.recipes": (("zmesh.__init__", "zmesh.errors", "zmesh.recipes"), ("zmq", "lmdb")),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of what ``path`` imports (relative imports resolved; ``from . import x``
    counted as the module ``pkg.x`` when it is one)."""
    name = _module_name(path)
    package = name.rsplit(".", 1)[0]  # a module's package; an __init__'s is its own
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                as_path = ROOT / sub.replace(".", "/")
                out.add(sub if as_path.with_suffix(".py").exists() or as_path.is_dir() else mod)
    return {("zmesh.__init__" if m == "zmesh" else m) for m in out}


def test_the_top_level_holds_only_the_public_entry_modules() -> None:
    modules = {p.name for p in PKG.glob("*.py")}
    assert modules == TOP_LEVEL, f"move these into a package: {sorted(modules - TOP_LEVEL)}"


@pytest.mark.parametrize("layer", sorted(RULES))
def test_a_layer_imports_only_what_is_below_it(layer: str) -> None:
    allowed, banned = RULES[layer]
    files = sorted((ROOT / layer.replace(".", "/")).rglob("*.py"))
    assert files, f"no modules in {layer}"
    wrong = []
    for path in files:
        for mod in sorted(_imports(path)):
            top = mod.split(".")[0]
            if mod.startswith("zmesh") and not any(mod == a or mod.startswith(a + ".") for a in allowed):
                wrong.append(f"{_module_name(path)} imports {mod}")
            elif top in banned:
                wrong.append(f"{_module_name(path)} imports {mod}")
    assert not wrong, "\n".join(wrong)


def test_the_rules_cover_every_package() -> None:
    """A new package gets a rule (or is a surface on top: cli, adapters, discovery)."""
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    surfaces = {"cli", "adapters", "discovery"}
    assert packages - surfaces == {name.split(".")[1] for name in RULES}
