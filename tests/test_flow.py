"""Flows under a real (temporary) Prefect API, one for the module (a second harness in the same process can hang when
it stops): ingest-logs (task runs, artifact, a failing validation) and study-mdt4rec (a task per cell)."""

import asyncio
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.ingest_logs import ingest_logs
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


async def _task_runs(flow_run_id, count: int, timeout: float = 60):
    """The flow run's task runs once ``count`` of them are recorded in a final state, and the artifacts. The flow
    sends task-run states to the server as events, which a busy server may record a moment after the flow returns."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if sum(run.state is not None and run.state.is_final() for run in runs) >= count:
                break
            assert time.monotonic() < deadline, [(run.name, run.state) for run in runs]
            await asyncio.sleep(0.5)
        artifacts = await client.read_artifacts()
    return runs, artifacts


def test_flow_runs_every_step_as_a_task(prefect_api, tmp_path):
    state = ingest_logs(dataset="coat", store=str(tmp_path / "store"), source=str(FIXTURES / "coat"), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["rows_read"] == summary["rows_accepted"] > 0 and summary["trajectories_built"]
    runs, artifacts = asyncio.run(_task_runs(state.state_details.flow_run_id, count=6))
    names = sorted(run.name.rsplit("-", 1)[0] for run in runs)
    assert names == [
        "build-trajectories",
        "check-interactions",
        "plan-logs",
        "read-logs",
        "store-logs",
        "store-side-tables",
    ]
    assert all(run.state.is_completed() for run in runs)
    assert any(a.key == "ingest-coat" and "rows read" in a.data for a in artifacts)


def test_flow_fails_on_a_failing_validation(prefect_api, tmp_path, monkeypatch):
    import datetime as dt

    import mdt4rec_core.data.ingest

    # The reader quarantines events from the future; widened here, they reach the suite, which refuses the batch.
    monkeypatch.setattr(mdt4rec_core.data.ingest, "FUTURE_TOLERANCE", dt.timedelta(days=365_000))
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,feedback\nu1,i1,1700000000,1\nu1,i2,2999-01-01T00:00:00Z,2\n")
    state = ingest_logs(dataset="log", store=str(tmp_path / "store"), source=str(log), format="csv", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="expect_column_max_to_be_between"):
        state.result()
    assert not (tmp_path / "store" / "interactions").exists()


def test_flow_rejects_an_unknown_override_before_any_work(prefect_api, tmp_path):
    state = ingest_logs(
        dataset="coat",
        store=str(tmp_path / "store"),
        source=str(FIXTURES / "coat"),
        overrides=["trajectories.nope=1"],
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="unknown configuration key 'trajectories.nope'"):
        state.result()
    assert not (tmp_path / "store").exists()


def test_the_study_flow_runs_every_cell_as_a_task(prefect_api, tmp_path, monkeypatch):
    from flows.study_mdt4rec import study_mdt4rec

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the MLflow artifacts of conf/pipeline.yaml land here
    overrides = ["episodes=5", "train.max_steps=2", "protocols=[paper]", "arms=[random,popularity,mdt4rec,mdt4rec-max]"]
    state = study_mdt4rec(
        budget="smoke", seeds=1, overrides=overrides, store=str(tmp_path / "store"), out="studies", return_state=True
    )
    assert state.is_completed(), state
    result = state.result()
    assert result["cells_run"] == 4 and {row["arm"] for row in result["rows"]} == {
        "random",
        "popularity",
        "mdt4rec",
        "mdt4rec-max",
    }
    runs, artifacts = asyncio.run(_task_runs(state.state_details.flow_run_id, count=6))
    names = sorted(run.name.rsplit("-", 1)[0] if run.name.startswith(("prepare", "log")) else run.name for run in runs)
    assert [n for n in names if n.startswith("cell-")] == [
        "cell-paper-mdt4rec-max-seed-0",
        "cell-paper-mdt4rec-seed-0",
        "cell-paper-popularity-seed-0",
        "cell-paper-random-seed-0",
    ]
    assert "prepare-protocol" in names and "log-study" in names
    assert all(run.state.is_completed() for run in runs)
    assert any(a.key == "study-ml-100k-smoke" and "#### Protocol `paper`" in a.data for a in artifacts)
