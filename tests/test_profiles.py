"""Run profiles, the flow's typed parameters, and the landing folder."""

import pytest

from mdt4rec_core.config import ConfigError, resolve_dataset
from mdt4rec_core.data.sources import interaction_files
from mdt4rec_core.profiles import PROFILES, load_run_plan


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves_to_a_plan(profile):
    plan = load_run_plan(profile, "ml-100k")
    assert plan.pipeline.dataset == "ml-100k" and plan.preset == {"smoke": "tiny"}.get(profile, profile)
    assert plan.pipeline.trajectories.protocol == "strict"  # no model sees the held-out users it is evaluated on
    # ... and its returns-to-go are those of the simulator that gates it.
    assert plan.pipeline.trajectories.quit_rule_protocol == plan.evaluation.gate.protocol
    assert plan.evaluation.gate.mode in plan.evaluation.modes


def test_overrides_reach_every_section():
    plan = load_run_plan(
        "smoke",
        None,
        ["train.max_steps=7", "model.item_dim=8", "evaluation.episodes=3", "pipeline.store=elsewhere"],
    )
    assert "train.max_steps=7" in plan.preset_overrides and "model.item_dim=8" in plan.preset_overrides
    assert plan.evaluation.episodes == 3 and plan.pipeline.store == "elsewhere" and plan.pipeline.dataset == "ml-1m"


@pytest.mark.parametrize(
    ("profile", "overrides", "message"),
    [
        ("huge", [], "unknown profile 'huge'"),
        ("smoke", ["evaluation.bogus=1"], "unknown configuration key 'evaluation.bogus'"),
        ("smoke", ["train.bogus=1"], "unknown configuration key 'train.bogus'"),
        ("smoke", ["model.bogus=1"], "bogus: unknown key"),
        ("smoke", ["train.max_steps=-1"], "max_steps"),
        ("smoke", ["evaluation.modes=[NX_0]"], "the gate"),
        ("smoke", ["scale.task_runner=ray"], "task_runner"),
    ],
)
def test_bad_plans_are_rejected_with_the_key_named(profile, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_plan(profile, "ml-100k", overrides)


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
