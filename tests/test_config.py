import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from mdt4rec_core.config import (
    CONF_DIR,
    PROFILES,
    RunConfig,
    TrajectoryConfig,
    apply_overrides,
    load_run_config,
    load_yaml,
    resolve_dataset,
    validate_config,
)
from mdt4rec_core.errors import ConfigError


def test_default_profile_loads_from_conf():
    config = load_run_config()
    assert config.dataset == "ml-1m"
    assert config.trajectories.state_length == 10
    assert config.trajectories.max_episode_steps == 30


def test_overrides_are_typed_from_yaml():
    config = load_run_config(
        overrides=["trajectories.state_length=20", "trajectories.session_gap_seconds=3600", "store=/tmp/x"]
    )
    assert config.trajectories.state_length == 20
    assert config.trajectories.session_gap_seconds == 3600.0
    assert config.store == "/tmp/x"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="trajectories.state_lenght"):
        load_run_config(overrides=["trajectories.state_lenght=3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"trajectories.state_length: .*'ten'"):
        load_run_config(overrides=["trajectories.state_length=ten"])


def test_unknown_key_in_yaml_data_is_named():
    data = apply_overrides({"dataset": "x"}, [], RunConfig)
    data["stores"] = "oops"
    with pytest.raises(ConfigError, match="stores: unknown key"):
        validate_config(RunConfig, data, "test")


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_run_config(overrides=["trajectories.state_length"])


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'.*ml-1m"):
        resolve_dataset("nope")


def test_ad_hoc_dataset_needs_source_and_format(tmp_path):
    dataset = resolve_dataset("mylog", str(tmp_path), "csv")
    assert dataset.format == "csv" and dataset.path == str(tmp_path)


def test_the_configuration_is_found_inside_the_installed_package():
    assert CONF_DIR == Path(str(files("mdt4rec_core").joinpath("conf")))
    assert {p.stem for p in (CONF_DIR / "profiles").glob("*.yaml")} == set(PROFILES)
    assert load_run_config("smoke").preset == "tiny"


def test_mdt4rec_conf_names_a_configuration_folder_of_ones_own(tmp_path):
    shutil.copytree(CONF_DIR, tmp_path / "conf")
    pipeline = tmp_path / "conf" / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text(encoding="utf-8").replace("store: store\n", "store: elsewhere\n"))
    show = "from mdt4rec_core.config import CONF_DIR, load_run_config; print(CONF_DIR, load_run_config().store)"
    result = subprocess.run(
        [sys.executable, "-c", show],
        env={**os.environ, "MDT4REC_CONF": str(tmp_path / "conf")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [str(tmp_path / "conf"), "elsewhere"]


# What every profile built before the protocol moved into conf/pipeline.yaml: a trajectory set's version hashes these
# settings, so sets already in a store keep their versions.
PROFILES_TRAJECTORIES = TrajectoryConfig(
    state_length=10, max_episode_steps=30, session_gap_seconds=None, protocol="strict", quit_rule_protocol="paper"
)


def test_every_command_and_profile_builds_the_same_trajectory_set():
    """One default in conf/pipeline.yaml: a command without a profile (`mdt4rec ingest`, `train`) builds and makes
    current the set every profile trains on, which leaves out the users the strict protocol evaluates on."""
    resolved = [load_run_config(), load_run_config(preset="tiny"), *(load_run_config(p) for p in PROFILES)]
    assert {run.trajectories for run in resolved} == {PROFILES_TRAJECTORIES}
    for profile in PROFILES:  # ... said once, not repeated by each profile
        assert "trajectories" not in load_yaml(CONF_DIR / "profiles" / f"{profile}.yaml")
