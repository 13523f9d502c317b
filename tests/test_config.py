import pytest

from mdt4rec_core.config import RunConfig, apply_overrides, load_run_config, resolve_dataset, validate_config
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
