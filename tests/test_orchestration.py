"""End to end against real servers (tests/orchestration_stack.py), the nightly deployment's life: served with its
schedule, runs that train, skip or take in new logs, the promotion gate and the champion alias, parameters refused,
failing validation, an unreachable tracking server, `mlflow models serve`, Dask and torchrun.

The tests run in file order on one store and one registry, as the nightly deployment would live through them.
"""

import json

import httpx
import pytest

from tests.orchestration_stack import (
    BIN,
    MODEL,
    flow_run_logs,
    free_port,
    landed_log,
    newest_started_flow_run,
    running_stack,
    start_process,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from running_stack(tmp_path_factory)


def test_the_nightly_deployment_is_served_with_its_schedule_and_limit(stack):
    deployment = stack.deployment()
    assert deployment["paused"] is False
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    assert deployment["schedules"][0]["schedule"]["timezone"] == "UTC"
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["parameters"] == {"profile": "smoke", "dataset": "ml-100k"}


def test_a_deployment_run_completes_and_registers_the_champion(stack):
    result = stack.run_deployment("profile=smoke")
    assert result.returncode == 0 and "Completed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    experiment = stack.mlflow.get_experiment_by_name("mdt4rec-ml-100k")
    (run,) = stack.mlflow.search_runs([experiment.experiment_id])
    for mode in ("FB", "NX_0", "NX_10"):
        for protocol in ("paper", "strict"):
            assert run.data.metrics[f"R_cumu_{mode}_{protocol}"] > 0
    assert len(stack.mlflow.get_metric_history(run.info.run_id, "train_loss")) == 30
    plots = {a.path for a in stack.mlflow.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("learning_curve", "r_cumu_by_mode", "chosen_history_lengths")}
    top = {a.path for a in stack.mlflow.list_artifacts(run.info.run_id)}
    assert {"config.json", "evaluation", "validation", "plots"} <= top
    assert [int(v.version) for v in stack.versions()] == [1] and stack.champion() == 1
    assert "Registered `mdt4rec` version 1 as champion" in stack.latest_summary()
    body = {"artifacts": {"key": {"any_": ["train-mdt4rec-ml-100k-metrics"]}}, "limit": 1}
    (table,) = httpx.post(f"{stack.prefect_api}/artifacts/filter", json=body, timeout=10).json()
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert table["type"] == "table" and {(r["mode"], r["protocol"]) for r in rows} == {
        (m, p) for m in ("FB", "NX_0", "NX_10") for p in ("paper", "strict")
    }


def test_a_run_with_no_new_data_skips_training(stack):
    result = stack.run_deployment("profile=smoke")
    assert result.returncode == 0 and "Completed" in result.stdout, result.stdout[-3000:]
    assert "Training skipped: no new data" in stack.latest_summary()
    assert [int(v.version) for v in stack.versions()] == [1]


def test_a_log_dropped_in_the_landing_folder_is_ingested_and_trained_on(stack):
    landed_log(stack, "2026-11-30.inter", rows=500, shift_seconds=10_000_000)
    result = stack.run_deployment("profile=smoke")
    assert result.returncode == 0 and "Completed" in result.stdout, result.stdout[-3000:]
    first, second = stack.versions()
    assert second.tags["trajectory_version"] != first.tags["trajectory_version"]
    assert "1 new file(s), 500 rows accepted" in stack.latest_summary()


def test_an_equal_or_worse_challenger_leaves_the_champion_where_it_was(stack):
    champion = stack.champion()
    result = stack.run_deployment("profile=smoke", "force=true")
    assert result.returncode == 0 and "Completed" in result.stdout, result.stdout[-3000:]
    newest = stack.versions()[-1]
    assert int(newest.version) == 3 and newest.tags["role"] == "challenger"
    assert stack.champion() == champion
    assert "as challenger: R_cumu" in stack.latest_summary()


def test_the_champion_alias_moves_by_hand_and_rolls_back(stack):
    before = stack.champion()
    promoted = stack.run(str(BIN / "mdt4rec"), "promote", "3", "--json")
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert json.loads(promoted.stdout.strip().splitlines()[-1]) == {"model": MODEL, "champion": 3, "previous": before}
    assert stack.champion() == 3
    rolled = stack.run(str(BIN / "mdt4rec"), "rollback")
    assert rolled.returncode == 0 and stack.champion() == before
    unknown = stack.run(str(BIN / "mdt4rec"), "promote", "42")
    assert unknown.returncode == 2 and "has no version 42" in unknown.stderr


def test_unknown_parameters_are_rejected_before_any_work(stack):
    count_before = httpx.post(f"{stack.prefect_api}/flow_runs/count", json={}, timeout=10).json()
    unknown_profile = stack.run_deployment("profile=huge")
    assert unknown_profile.returncode != 0 and "profile" in unknown_profile.stdout + unknown_profile.stderr
    unknown_parameter = stack.run_deployment("epochs=3")
    assert unknown_parameter.returncode != 0 and "epochs" in unknown_parameter.stdout + unknown_parameter.stderr
    assert httpx.post(f"{stack.prefect_api}/flow_runs/count", json={}, timeout=10).json() == count_before
    override = stack.run(
        str(BIN / "mdt4rec"), "pipeline", "--profile", "smoke", "-d", "ml-100k", "--set", "train.bogus=1"
    )
    assert override.returncode == 2 and "unknown configuration key 'train.bogus'" in override.stderr
    assert httpx.post(f"{stack.prefect_api}/flow_runs/count", json={}, timeout=10).json() == count_before


def test_stopping_the_serving_process_leaves_the_deployment_unpaused(stack):
    stop_process(stack.deploy)
    deployment = stack.deployment()
    assert deployment["paused"] is False and all(s["active"] for s in deployment["schedules"])


def test_a_failing_validation_fails_the_flow_with_its_report_and_registers_nothing(stack):
    from tests.test_lock_and_failures import READER_CLOCK_AHEAD

    # Events decades ahead, read by a process that takes them for current ones: the interaction suite fails on them.
    bad = landed_log(stack, "2026-12-01.inter", rows=20, shift_seconds=40 * 365 * 86400)
    named = str(bad.relative_to(stack.work))  # as the flow finds it in the landing folder
    versions = [int(v.version) for v in stack.versions()]
    command = [str(BIN / "mdt4rec"), "pipeline", "--profile", "smoke", "-d", "ml-100k"]
    try:
        result = stack.run(*command, env={"PYTHONPATH": str(READER_CLOCK_AHEAD)})
    finally:
        bad.unlink()
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: {named}: suite 'interactions': " in result.stderr
    assert "expect_column_max_to_be_between" in result.stderr and "Data Docs:" in result.stderr
    flow_run_id = newest_started_flow_run(stack)["id"]
    assert any(named in log["message"] for log in flow_run_logs(stack, flow_run_id, named))
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    artifacts = httpx.post(f"{stack.prefect_api}/artifacts/filter", json=body, timeout=10).json()
    assert any(named in artifact["data"] for artifact in artifacts)
    assert [int(v.version) for v in stack.versions()] == versions


def test_an_unreachable_tracking_server_is_a_clear_error_and_registers_nothing(stack):
    result = stack.run(
        str(BIN / "mdt4rec"),
        "pipeline",
        "--profile",
        "smoke",
        "-d",
        "ml-100k",
        "--force",
        "--set",
        "tracking.retries=1",  # the error after one retry, not after the default four (30 s of back-off)
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
    )
    assert result.returncode == 2 and "cannot be reached" in result.stderr, result.stderr[-3000:]
    assert [int(v.version) for v in stack.versions()] == [1, 2, 3]


def test_the_champion_is_served_by_mlflow_models_serve(stack):
    from mdt4rec_core.config import load_run_config

    port = free_port()
    log = stack.logs / "serve.log"
    serve = start_process(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stack.env,
        stack.work,
        log,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", serve, log)
        request = {"dataframe_records": [{"history": ["242", "302"]}, {"history": ["51"]}], "params": {"k": 3}}
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [len(p["items"]) for p in predictions] == [3, 3]
        assert all(p["chosen_history_length"] >= 1 for p in predictions)
        unknown = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": [{"history": ["nope"]}]}, timeout=60
        )
        assert unknown.status_code == 400 and "unknown item id 'nope'" in unknown.text
        mixed = {"dataframe_records": [{"history": ["242", "302"], "feedback": [5, 3.5]}, {"history": ["51"]}]}
        assert httpx.post(f"http://127.0.0.1:{port}/invocations", json=mixed, timeout=60).status_code == 200
        nan = '{"dataframe_records": [{"history": ["51"]}, {"history": ["242", "302"], "feedback": [4, NaN]}]}'
        refused = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            content=nan,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert refused.status_code == 400
        assert refused.json()["message"].endswith("row 1: feedback[1] is nan: feedback values must be finite numbers")
        limit = load_run_config().serving.max_users_per_request
        too_many = {"dataframe_records": [{"history": ["51"]}] * (limit + 1)}
        oversized = httpx.post(f"http://127.0.0.1:{port}/invocations", json=too_many, timeout=60)
        assert oversized.status_code == 400
        assert oversized.json()["message"].endswith(
            f"at most {limit:,} users per request (serving.max_users_per_request)"
        )
    finally:
        stop_process(serve)


def test_evaluations_fan_out_on_a_two_worker_dask_cluster_with_the_same_figures(stack, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.train_mdt4rec import evaluate_all, task_runner
    from mdt4rec_core.config import EvaluationPlan, ScaleConfig, TrackingConfig
    from tasks.tracking import connect, download_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.tracking_uri)
    client = connect(TrackingConfig())
    champion = client.get_model_version_by_alias(MODEL, "champion")
    checkpoint = download_model(champion, stack.work / "champion") / "artifacts" / "checkpoint"
    plan = EvaluationPlan(modes=["FB", "NX_10"], protocols=["paper"], episodes=20, seeds=2)
    store = str(stack.work / "store")
    with temporary_settings({PREFECT_API_URL: stack.prefect_api}):  # the real server, not an ephemeral one
        results = {
            runner: evaluate_all.with_options(task_runner=task_runner(ScaleConfig(task_runner=runner)))(
                store, "ml-100k", str(checkpoint), plan
            )
            for runner in ("threads", "dask")
        }
    assert [r["R_cumu"] for r in results["dask"]] == [r["R_cumu"] for r in results["threads"]]
    assert [r["mode"] for r in results["dask"]] == ["FB", "NX_10"]


def test_the_train_task_runs_under_torchrun_with_two_processes(stack, tmp_path):
    from mdt4rec_core.config import load_run_config
    from tasks.training import train_model

    store = stack.work / "store"
    run = load_run_config(
        "smoke", "ml-100k", ["scale.train_processes=2", "train.max_steps=4", f"store={json.dumps(str(store))}"]
    )
    summary = train_model(run, tmp_path / "ddp")
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (tmp_path / "ddp" / "checkpoint" / "model.safetensors").is_file()
