"""Imports point down the layer order only: a module imports from its own layer or lower ones.

Every ``import`` and ``from ... import`` statement counts, wherever it stands (module level, inside a function, under
``if TYPE_CHECKING``): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mdt4rec_core", "tasks", "flows", "mdt4rec_cli")

LAYERS = {
    "mdt4rec_core.errors": 0,
    "mdt4rec_core.config": 0,
    "mdt4rec_core.data": 1,
    "mdt4rec_core.model": 2,
    "mdt4rec_core.inference": 3,
    "mdt4rec_core.envs": 4,
    "mdt4rec_core.train": 4,
    "mdt4rec_core.baselines": 4,
    "mdt4rec_core.study": 5,
    "tasks": 6,
    "flows": 7,
    "mdt4rec_cli": 8,
}
"""Package (or module) prefix -> layer, lowest first. The longest matching prefix decides."""


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name, or None for a module outside the order (a third-party one, the bare
    ``mdt4rec_core`` package)."""
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of every module the source of ``module`` imports; relative imports are resolved, and
    ``from package import name`` names ``package.name`` (the name may be a submodule)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base) for alias in node.names]
    return sorted(found)


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """``module:line imports name (layer a -> b)`` for every import of ``source`` that points to a higher layer."""
    own = layer_of(module)
    if own is None:
        return []
    problems = []
    for line, name in imported_modules(source, module, is_package):
        target = layer_of(name)
        if target is not None and target > own:
            problems.append(f"{module}:{line} imports {name} (layer {own} -> {target})")
    return problems


def project_modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of every Python module of the project's packages."""
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return modules


def test_every_module_has_a_layer():
    unplaced = [name for name, _ in project_modules() if name != "mdt4rec_core" and layer_of(name) is None]
    assert not unplaced, f"modules outside the layer order: {unplaced}"


def test_imports_point_down_the_layer_order():
    problems = []
    for name, path in project_modules():
        problems += upward_imports(path.read_text(), name, is_package=path.name == "__init__.py")
    assert not problems, "imports pointing to a higher layer:\n" + "\n".join(problems)


def test_the_check_flags_an_upward_import():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from mdt4rec_core.errors import InputError\n"
        "if TYPE_CHECKING:\n"
        "    from mdt4rec_core.model.network import MDT4Rec\n"
        "def build():\n"
        "    import mdt4rec_core.envs.simulator\n"
        "    from . import schema\n"
        "    from .. import inference\n"
    )
    assert upward_imports(source, "mdt4rec_core.data.windows") == [
        "mdt4rec_core.data.windows:5 imports mdt4rec_core.model.network.MDT4Rec (layer 1 -> 2)",
        "mdt4rec_core.data.windows:7 imports mdt4rec_core.envs.simulator (layer 1 -> 4)",
        "mdt4rec_core.data.windows:9 imports mdt4rec_core.inference (layer 1 -> 3)",
    ]
    assert upward_imports("from mdt4rec_core.data.store import Store\n", "tasks.ingest") == []
    assert upward_imports("from flows.ingest_logs import ingest_logs\n", "tasks.ingest") == [
        "tasks.ingest:1 imports flows.ingest_logs.ingest_logs (layer 6 -> 7)"
    ]
