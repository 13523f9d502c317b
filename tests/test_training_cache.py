"""A finished training is found again by the key of its inputs (data, resolved settings), and is reused only while no
registered version carries its checkpoint."""

import pytest

from mdt4rec_core.config import load_run_config
from tasks.training import remember_training, reusable_training, training_inputs, training_key

VERSION = "0123456789abcdef"


def _key(overrides: list[str] = (), trajectory_version: str = VERSION, dataset: str = "ml-100k") -> str:
    return training_key(training_inputs(load_run_config("smoke", dataset, list(overrides)), trajectory_version))


def test_the_same_inputs_give_the_same_key():
    assert _key() == _key()
    assert _key(["evaluation.episodes=5", "tracking.retries=1"]) == _key()  # not inputs of the training


@pytest.mark.parametrize(
    "change",
    [
        {"trajectory_version": "fedcba9876543210"},
        {"dataset": "ml-1m"},
        {"overrides": ["train.max_steps=31"]},
        {"overrides": ["train.seed=1"]},
        {"overrides": ["model.item_dim=32"]},
        {"overrides": ["scale.train_processes=2"]},
        {"overrides": ["store=elsewhere"]},
    ],
)
def test_any_change_of_data_or_settings_gives_another_key(change):
    assert _key(**change) != _key()


def _finished(tmp_path, run, name: str) -> dict:
    checkpoint = tmp_path / "runs" / name / "checkpoint"
    checkpoint.mkdir(parents=True)
    trained = {"trajectory_version": VERSION, "checkpoint": str(checkpoint), "steps": 30, "history": {}}
    remember_training(tmp_path / "runs", run, trained)
    return trained


def test_a_finished_training_is_reused_until_a_version_carries_its_checkpoint(tmp_path):
    run = load_run_config("smoke", "ml-100k")
    runs = tmp_path / "runs"
    assert reusable_training(runs, run, VERSION, set()) is None
    first = _finished(tmp_path, run, "first")
    assert reusable_training(runs, run, VERSION, set()) == first
    assert reusable_training(runs, run, "fedcba9876543210", set()) is None
    assert reusable_training(runs, load_run_config("smoke", "ml-100k", ["train.seed=1"]), VERSION, set()) is None
    assert reusable_training(runs, run, VERSION, {first["checkpoint"]}) is None
    second = _finished(tmp_path, run, "second")  # trained anew with the same inputs: it replaces the first
    assert reusable_training(runs, run, VERSION, {first["checkpoint"]}) == second


def test_a_training_whose_checkpoint_is_gone_is_not_reused(tmp_path):
    run = load_run_config("smoke", "ml-100k")
    trained = _finished(tmp_path, run, "gone")
    (tmp_path / "runs" / "gone" / "checkpoint").rmdir()
    assert reusable_training(tmp_path / "runs", run, trained["trajectory_version"], set()) is None
