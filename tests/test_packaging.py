"""The project as a package: its dependencies are what its code imports, and a wheel installed without the checkout
(`pip install .`, not editable) carries its configuration and runs the pipeline from any folder.

The wheel is built from a copy of the sources with the setuptools already installed, and installed into a fresh
virtual environment that reuses this one's third-party packages (a .pth file) instead of downloading them again.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from mdt4rec_core.config import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = [pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
NEVER_IMPORTED = {
    "accelerate": "transformers needs it to read the GGUF backbone",
    "gguf": "transformers needs it to read the GGUF backbone",
    "pytest-xdist": "a pytest plugin: `make test` runs the suite on several workers with it",
    "ruff": "the lint, a command",
    "uv": "builds the served model's fresh environment in the tests, a command",
}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements: list[str]) -> set[str]:
    """The distribution names of ``name==version`` requirements."""
    return {normalised(requirement.split("==")[0]) for requirement in requirements}


def imported_modules(folders: list[str]) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere (lazy imports too) under ``folders`` -> the importing files."""
    own = set(PACKAGES) | {"tests", "benchmarks"}
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {name.split(".")[0] for name in names} - own - set(sys.stdlib_module_names):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(imports: dict[str, set[str]], declared: set[str]) -> dict[str, set[str]]:
    """The imported modules that no ``declared`` distribution provides -> the files importing them."""
    providers = importlib.metadata.packages_distributions()
    return {
        module: files
        for module, files in imports.items()
        if not {normalised(d) for d in providers.get(module, [module])} & declared
    }


def provided(imports: dict[str, set[str]]) -> set[str]:
    """The distributions that provide the imported modules."""
    providers = importlib.metadata.packages_distributions()
    return {normalised(d) for module in imports for d in providers.get(module, [module])}


def test_dependencies_are_what_the_packages_import():
    imports = imported_modules(PACKAGES)
    declared = pinned(PYPROJECT["project"]["dependencies"])
    assert undeclared(imports, declared) == {}
    assert declared - provided(imports) == {name for name in NEVER_IMPORTED if name in declared}


def test_what_only_the_tests_import_is_the_test_extra():
    imports = imported_modules(["tests", "benchmarks"])
    declared = pinned(PYPROJECT["project"]["dependencies"])
    extra = pinned(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert undeclared(imports, declared | extra) == {}
    assert extra - provided(imports) == {name for name in NEVER_IMPORTED if name in extra}
    assert not extra & declared


def _build_wheel(folder: Path) -> Path:
    """A wheel of the project built from a copy of its sources (the checkout stays untouched)."""
    source = folder / "source"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy2(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=600)
    return next(folder.glob("mdt4rec-*.whl"))


def _venv_with(wheel: Path, folder: Path) -> Path:
    """A fresh virtual environment with ``wheel`` installed (not editable); the third-party packages come from this
    environment's site-packages through a .pth file. Its bin folder."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--ignore-installed"]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=600)
    return venv / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the bin folder of a fresh environment where it is installed)."""
    folder = tmp_path_factory.mktemp("packaging")
    wheel = _build_wheel(folder)
    return wheel, _venv_with(wheel, folder)


def outside_the_checkout(**extra: str) -> dict[str, str]:
    """This environment without anything that points at the checkout or at servers."""
    unset = ("PYTHONPATH", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MDT4REC_CONF", "VIRTUAL_ENV")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, **extra}


def test_the_wheel_carries_the_configuration(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {f"mdt4rec_core/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert "mdt4rec_core/conf/pipeline.yaml" in conf and conf <= names


def test_the_installed_packages_come_from_the_wheel(installed, tmp_path):
    _, bin_dir = installed
    show = "import mdt4rec_core, tasks, flows, mdt4rec_cli, mdt4rec_core.config as c; print(mdt4rec_core.__file__, "
    show += "tasks.__file__, flows.__file__, mdt4rec_cli.__file__, c.CONF_DIR)"
    result = subprocess.run(
        [str(bin_dir / "python"), "-c", show], cwd=tmp_path, env=outside_the_checkout(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    site = bin_dir.parent / "lib"
    for location in result.stdout.split():
        assert Path(location).is_relative_to(site) and not Path(location).is_relative_to(ROOT), location


def test_the_installed_command_runs_the_pipeline_from_any_folder(installed, tmp_path):
    _, bin_dir = installed
    command = [str(bin_dir / "mdt4rec"), "pipeline", "--profile", "smoke", "-d", "ml-100k", "--json"]
    for assignment in ("train.max_steps=2", "evaluation.episodes=3", "evaluation.seeds=1"):
        command += ["--set", assignment]
    result = subprocess.run(
        command, cwd=tmp_path, env=outside_the_checkout(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["registration"]["version"] == 1
    assert summary["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "store").is_dir() and (tmp_path / "mlflow.db").is_file()
