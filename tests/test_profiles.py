"""The run configuration's layers (pipeline defaults, preset, profile, --set), the flow's typed parameters, and the
landing folder."""

import pytest

from mdt4rec_core.config import PROFILES, ConfigError, load_run_config, resolve_dataset
from mdt4rec_core.data.sources import interaction_files


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves_to_a_run_config(profile):
    run = load_run_config(profile, "ml-100k")
    assert run.dataset == "ml-100k" and run.profile == profile
    assert run.preset == {"smoke": "tiny"}.get(profile, profile)
    assert run.trajectories.protocol == "strict"  # no model sees the held-out users it is evaluated on
    # ... and its returns-to-go are those of the simulator that gates it.
    assert run.trajectories.quit_rule_protocol == run.evaluation.gate.protocol
    assert run.evaluation.gate.mode in run.evaluation.modes


def test_layers_stack_pipeline_then_preset_then_profile_then_overrides():
    defaults, preset, profile = load_run_config(), load_run_config(preset="cpu"), load_run_config("cpu")
    assert defaults.model.item_dim == 64 and preset.model.item_dim == 32  # conf/models/cpu.yaml over the defaults
    assert preset.trajectories.protocol == profile.trajectories.protocol == "strict"  # conf/pipeline.yaml's
    assert load_run_config(preset="tiny").train.max_steps == 40 and load_run_config("smoke").train.max_steps == 30
    run = load_run_config(
        "smoke", None, ["train.max_steps=7", "model.item_dim=8", "evaluation.episodes=3", "store=elsewhere"]
    )
    assert (run.train.max_steps, run.model.item_dim, run.evaluation.episodes) == (7, 8, 3)
    assert run.store == "elsewhere" and run.dataset == "ml-1m"


def test_a_run_config_round_trips_through_json(tmp_path):
    from mdt4rec_core.config import load_run_config_file

    run = load_run_config("cpu", "ml-100k", ["model.backbone.lora_r=4"])
    (tmp_path / "run.json").write_text(run.model_dump_json())
    assert load_run_config_file(tmp_path / "run.json") == run


@pytest.mark.parametrize(
    ("profile", "overrides", "message"),
    [
        ("huge", [], "unknown profile 'huge'"),
        ("smoke", ["evaluation.bogus=1"], "unknown configuration key 'evaluation.bogus'"),
        ("smoke", ["train.bogus=1"], "unknown configuration key 'train.bogus'"),
        ("smoke", ["model.bogus=1"], "unknown configuration key 'model.bogus'"),
        ("smoke", ["preset=paper"], "choose the profile with --profile and the preset with --preset"),
        ("smoke", ["train.max_steps=-1"], "max_steps"),
        ("smoke", ["evaluation.modes=[NX_0]"], "the gate"),
        ("smoke", ["scale.task_runner=ray"], "task_runner"),
    ],
)
def test_bad_run_configs_are_rejected_with_the_key_named(profile, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(profile, "ml-100k", overrides)


def test_an_unknown_key_in_a_layer_file_names_the_file(tmp_path):
    (tmp_path / "pipeline.yaml").write_text("dataset: ml-1m\nmodel: {item_dimm: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'model.item_dimm' in .*pipeline.yaml"):
        load_run_config(base=tmp_path / "pipeline.yaml")


def test_the_flow_parameters_are_the_typed_request():
    from flows.train_mdt4rec import TrainRequest, train_mdt4rec

    schema = train_mdt4rec.parameters.model_dump()
    assert set(schema["properties"]) == set(TrainRequest.model_fields)
    assert all(f"'{profile}'" in str(schema) for profile in PROFILES)  # the choices the UI form offers
    for name, field in TrainRequest.model_fields.items():
        assert schema["properties"][name].get("default") == field.get_default()


def test_landed_files_follow_the_dataset_files_in_path_order(tmp_path):
    landing = tmp_path / "landing"
    (landing / "2026-12-02").mkdir(parents=True)
    for name in ("2026-12-01.inter", "2026-12-02/late.inter", "notes.txt"):
        (landing / name).write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    dataset = resolve_dataset("ml-100k").model_copy(update={"landing": str(landing)})
    files = interaction_files(dataset)
    assert [f.name for f in files] == ["ml-100k.inter", "2026-12-01.inter", "late.inter"]
    missing = resolve_dataset("ml-100k").model_copy(update={"landing": str(tmp_path / "none")})
    assert [f.name for f in interaction_files(missing)] == ["ml-100k.inter"]
