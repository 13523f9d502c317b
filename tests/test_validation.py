"""The Great Expectations suites catch what they are meant to catch, and a failing suite stops the run."""

import datetime as dt

import polars as pl
import pytest

from mdt4rec_core.config import TrajectoryConfig
from mdt4rec_core.data.trajectories import episode_rule, trajectories_in_memory
from tasks.validation import ValidationFailed, validate_interactions, validate_trajectories

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _events(n=40):
    return pl.DataFrame(
        {
            "user_id": [f"u{k % 4}" for k in range(n)],
            "item_id": [f"i{k % 7}" for k in range(n)],
            "timestamp": [T0 + dt.timedelta(minutes=k) for k in range(n)],
            "feedback": [float(k % 5) for k in range(n)],
        }
    )


def _failed(report):
    return {(o.expectation, o.columns) for o in report.outcomes if not o.success}


def test_clean_interactions_pass_and_write_data_docs(tmp_path):
    report = validate_interactions(_events(), tmp_path / "docs")
    assert report.success, report.summary()
    assert (tmp_path / "docs" / "index.html").is_file()


def test_each_site_shows_its_own_validations_only(tmp_path):
    """One process validates two stores: the second's site lists its interactions and trajectories, not the first's."""
    events = _events()
    trajectories = trajectories_in_memory(events, TrajectoryConfig(), episode_rule(TrajectoryConfig()))

    def pages(site):
        return sorted((site / "validations").rglob("*.html"))

    first, second = tmp_path / "first", tmp_path / "second"
    validate_interactions(events, first)
    validate_interactions(events, second)
    validate_trajectories(trajectories.steps, TrajectoryConfig(), trajectories.catalogue.height, second)
    assert len(pages(first)) == 1 and len(pages(second)) == 2
    suites = [page.relative_to(second / "validations").parts[0].split("-")[0] for page in pages(second)]
    assert suites == ["interactions", "trajectories"]
    index = (second / "index.html").read_text()
    assert all(page.relative_to(second).as_posix() in index for page in pages(second))


def test_interaction_suite_catches_duplicates_negatives_nulls_and_future_events(tmp_path):
    events = _events()
    bad = pl.concat(
        [
            events,
            events.head(1),  # duplicate (user, item, timestamp)
            events.slice(1, 1).with_columns(pl.lit(-2.0).alias("feedback")),
            events.slice(2, 1).with_columns(pl.lit(None, pl.String).alias("item_id")),
            events.slice(3, 1).with_columns(pl.lit(T0.replace(year=2999)).alias("timestamp")),
        ]
    )
    report = validate_interactions(bad, tmp_path / "docs", now=T0)
    assert _failed(report) == {
        ("expect_compound_columns_to_be_unique", "user_id,item_id,timestamp"),
        ("expect_column_values_to_be_between", "feedback"),
        ("expect_column_values_to_not_be_null", "item_id"),
        ("expect_column_max_to_be_between", "timestamp"),
    }
    summary = report.summary()
    assert "FAILED expect_column_values_to_be_between(feedback): 1 unexpected" in summary
    assert "Data Docs:" in summary


def _trajectories():
    config = TrajectoryConfig(state_length=3, max_episode_steps=5)
    return trajectories_in_memory(_events(), config, episode_rule(config)), config


def test_built_trajectories_pass(tmp_path):
    built, config = _trajectories()
    report = validate_trajectories(built.steps, config, built.catalogue.height, tmp_path)
    assert report.success, report.summary()


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (
            pl.when(pl.col("step") == 1)
            .then(pl.col("return_to_go") + 0.5)
            .otherwise(pl.col("return_to_go"))
            .alias("return_to_go"),
            "return_to_go_residual",
        ),
        (pl.when(pl.col("step") == 0).then(7).otherwise(pl.col("action")).alias("action"), "action"),
        (pl.lit(False).alias("done"), "terminal_steps_in_episode"),
        (pl.col("reward") * 2, "reward"),
        (pl.col("timestamp").reverse(), "seconds_since_previous_step"),
    ],
)
def test_trajectory_suite_catches_corruption(tmp_path, corrupt, expected):
    built, config = _trajectories()
    steps = built.steps.with_columns(corrupt)
    report = validate_trajectories(steps, config, built.catalogue.height, tmp_path)
    assert expected in {columns for _, columns in _failed(report)}, report.summary()


def test_failing_suite_stops_the_run_before_anything_is_stored(ingest, tmp_path, monkeypatch):
    # The reader's bound on future events is widened, so a future event reaches the interactions suite: the suite
    # fails and nothing is written.
    monkeypatch.setattr("mdt4rec_core.data.ingest.FUTURE_TOLERANCE", dt.timedelta(days=400_000))
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,feedback\nu1,i1,1700000000,1\nu1,i2,2999-01-01T00:00:00Z,2\n")
    with pytest.raises(ValidationFailed) as failure:
        ingest(log)
    message = str(failure.value)
    assert message.startswith(f"{log}: suite 'interactions': ")  # the error line names the file
    assert "FAILED expect_column_max_to_be_between(timestamp)" in message and "index.html" in message
    store = tmp_path / "store"
    assert not (store / "interactions").exists() and not (store / "manifest").exists()
    assert (store / "reports" / "dataset=log" / "index.html").is_file()
