"""End to end against real servers (tests/orchestration_stack.py), a stack of its own: faults a served run lives
through (a held lock, the tracking server going away mid-run, the serving process killed) and a run traced in MLflow
and in its Prefect logs. The tests run in file order on one store and one registry.
"""

import datetime as dt
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.orchestration_stack import (
    BIN,
    DEPLOYMENT,
    MODEL,
    await_state,
    create_run,
    flow_run_logs,
    landed_log,
    mlflow_api,
    newest_started_flow_run,
    prefect_api,
    running_stack,
    serve_deployment,
    start_process,
    stop_process,
    train_task_runs,
)

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from running_stack(tmp_path_factory)


def test_a_run_whose_tracking_server_went_away_is_registered_by_the_next_without_training_again(stack):
    landed_log(stack, "2026-12-02.inter", rows=300, shift_seconds=20_000_000)
    versions, trainings = len(stack.versions()), len(train_task_runs(stack))
    fast = ["evaluation.episodes=5", "evaluation.seeds=1", "tracking.retries=1"]
    command = [str(BIN / "mdt4rec"), "pipeline", "--profile", "smoke", "-d", "ml-100k", "--json"]
    command += [part for assignment in fast for part in ("--set", assignment)]
    log = stack.logs / "pipeline-tracking-gone.log"
    first = start_process(command, stack.env, stack.work, log)
    try:
        deadline = time.monotonic() + 600
        while len(train_task_runs(stack)) == trainings:  # the server is not called again until registration
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        stack.stop_tracking_server()
        try:
            first.wait(timeout=600)
        finally:
            stack.start_tracking_server()
    finally:
        stop_process(first)
    errors = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    assert first.returncode == 2 and len(errors) == 1, log.read_text()[-3000:]
    assert errors[0].startswith(f"error: MLflow at {stack.tracking_uri} stopped answering (Connection refused); ")
    assert errors[0].endswith("registers it without training again")
    assert len(stack.versions()) == versions

    second = stack.run(*command)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["training"]["reused"] and f"the checkpoint {summary['training']['checkpoint']} is kept" in errors[0]
    second = newest_started_flow_run(stack)
    assert second["state_type"] == "COMPLETED" and train_task_runs(stack, second["id"]) == []
    newest = stack.versions()[-1]
    assert len(stack.versions()) == versions + 1 and newest.tags["checkpoint"] == summary["training"]["checkpoint"]
    assert "Training: reused `" in stack.latest_summary()


def test_a_held_lock_is_in_the_run_log_at_once_and_fails_the_run_after_its_timeout(stack):
    from tests.test_lock_and_failures import hold_writer_lock

    holder = hold_writer_lock(stack.work / "store", "ml-100k")
    try:
        result = stack.run_deployment("profile=smoke", 'overrides=["ingest.lock_timeout_seconds=5"]')
    finally:
        stop_process(holder)
    assert result.returncode != 0 and "Failed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    logs = flow_run_logs(stack, newest_started_flow_run(stack)["id"], "still held by pid")
    waiting = [i for i, log in enumerate(logs) if "waiting for the lock on ml-100k held by pid" in log["message"]]
    assert waiting, [log["message"][:200] for log in logs]
    first = logs[waiting[0]]
    assert f"held by pid {holder.pid} since " in first["message"] and "waited 0 s" in first["message"]
    started = dt.datetime.fromisoformat(logs[waiting[0] - 1]["timestamp"])  # the record before: the task before
    assert (dt.datetime.fromisoformat(first["timestamp"]) - started).total_seconds() < 5
    assert any(f"the lock on ml-100k is still held by pid {holder.pid}" in log["message"] for log in logs)


def test_a_killed_serving_process_and_run_turn_crashed_and_free_the_slot_for_the_next_run(stack):
    import psutil

    from mdt4rec_core.config import load_run_config

    settings = load_run_config("smoke", "ml-100k").deployment
    assert settings.crash_after_seconds == 60
    serving = stack.deploy if stack.deploy.poll() is None else serve_deployment(stack)
    flow_run_id = create_run(stack, force=True)
    deadline = time.monotonic() + 300
    while not train_task_runs(stack, flow_run_id):
        assert time.monotonic() < deadline, "the run did not reach its train task"
        time.sleep(0.2)
    children = psutil.Process(serving.pid).children(recursive=True)  # the flow run's process and its helpers
    assert children
    for pid in (serving.pid, *(child.pid for child in children)):
        os.kill(pid, signal.SIGKILL)
    serving.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive

    # The last heartbeat came at most heartbeat_seconds before the kill; the automation looks every few seconds.
    bound = settings.crash_after_seconds + 30
    crashed_after = await_state(stack, flow_run_id, "CRASHED", timeout=bound)
    print(f"Crashed {crashed_after:.0f} s after the kill (bound {bound} s)")
    assert stack.deployment()["global_concurrency_limit"]["active_slots"] == 0

    serve_deployment(stack)
    next_run = create_run(stack, force=True)  # trains (the data may have been trained on), so it can be cancelled
    assert await_state(stack, next_run, "RUNNING", timeout=60) < 60  # the slot's lease would hold it for 300 s
    httpx.post(
        f"{stack.prefect_api}/flow_runs/{next_run}/set_state", json={"state": {"type": "CANCELLING"}}, timeout=10
    )
    await_state(stack, next_run, "CANCELLED", timeout=60)


def test_a_nightly_run_is_traced_in_mlflow_and_in_its_prefect_logs(stack):
    from mdt4rec_core.config import load_run_config

    if not any(process.poll() is None and "deploy" in process.args for process in stack.servers):
        serve_deployment(stack)  # the serving process an earlier test killed
    overrides = ["evaluation.gate.baselines=[random,popularity]", "evaluation.episodes=20"]
    result = stack.run_deployment("profile=smoke", "force=true", f"overrides={json.dumps(overrides)}")
    assert result.returncode == 0 and "Completed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    flow_run_id = newest_started_flow_run(stack)["id"]
    resolved = load_run_config("smoke", "ml-100k", overrides)

    # MLflow, through its REST API: the run of this flow run, its settings, code, data, losses and figures.
    experiment = mlflow_api(stack, "GET", "experiments/get-by-name", experiment_name="mdt4rec-ml-100k")
    found = mlflow_api(
        stack,
        "POST",
        "runs/search",
        experiment_ids=[experiment["experiment"]["experiment_id"]],
        filter=f"tags.prefect_flow_run_id = '{flow_run_id}'",
    )
    (nightly,) = found["runs"]
    run_id = nightly["info"]["run_id"]
    assert nightly["info"]["status"] == "FINISHED"
    params = {param["key"]: param["value"] for param in nightly["data"]["params"]}
    settings = ("train.learning_rate", "train.batch_size", "model.backbone.lora_r", "model.context_steps")
    for key in (*settings, "search.delta", "search.kappa"):
        assert params[key] == resolved.params()[key]
    tags = {tag["key"]: tag["value"] for tag in nightly["data"]["tags"]}
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert tags["mlflow.source.git.commit"] == head.stdout.strip() and re.fullmatch(
        r"[0-9a-f]{40}", head.stdout.strip()
    )
    assert tags["prefect_flow_run_url"] == f"{stack.prefect_api.removesuffix('/api')}/runs/flow-run/{flow_run_id}"
    (trained_on,) = nightly["inputs"]["dataset_inputs"]
    version = mlflow_api(stack, "GET", "model-versions/get", name=MODEL, version=tags["registered_version"])
    trajectory_version = {t["key"]: t["value"] for t in version["model_version"]["tags"]}["trajectory_version"]
    assert trained_on["dataset"]["name"] == "ml-100k-trajectories"
    assert trained_on["dataset"]["digest"] == trajectory_version
    assert json.loads(trained_on["dataset"]["source"])["uri"].endswith(f"/version={trajectory_version}")
    history = mlflow_api(stack, "GET", "metrics/get-history", run_id=run_id, metric_key="train_loss")["metrics"]
    assert len({point["step"] for point in history}) >= 10
    metrics = {metric["key"]: metric["value"] for metric in nightly["data"]["metrics"]}
    for baseline in ("random", "popularity"):
        assert metrics[f"R_cumu_FB_paper_{baseline}"] > 0 and metrics[f"R_cumu_ci95_FB_paper_{baseline}"] >= 0
    card = version["model_version"]["description"]
    assert f"trajectory set `{trajectory_version}`" in card and f"K = {resolved.model.context_steps} steps" in card
    assert f"model {metrics['R_cumu_FB_paper']:.3f} ± " in card and "; random " in card and "; popularity " in card
    assert re.search(r"\*\*Gate\*\*: (champion|challenger): ", card), card

    # Prefect: task runs named by their arguments, the stages' figures and the gate's decision in the run's log.
    names = {
        run["name"] for run in prefect_api(stack, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    }
    assert {
        "prepare-environment-paper",
        "evaluate-baseline-random-FB-paper",
        "evaluate-baseline-popularity-FB-paper",
    } <= names
    (subflow,) = prefect_api(stack, "flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
    evaluated = {
        run["name"] for run in prefect_api(stack, "task_runs/filter", {"flow_runs": {"id": {"any_": [subflow["id"]]}}})
    }
    assert evaluated == {
        f"evaluate-{mode}-{protocol}" for mode in ("FB", "NX_0", "NX_10") for protocol in ("paper", "strict")
    }
    messages = [log["message"] for log in flow_run_logs(stack, flow_run_id, "gate decision: ")]
    (decision,) = [message for message in messages if message.startswith("gate decision: ")]
    assert re.match(
        rf"gate decision: {MODEL} version {tags['registered_version']} is (champion|challenger) \(", decision
    )
    assert f"R_cumu {metrics['R_cumu_FB_paper']:.3f} on " in decision
    assert re.search(r"baselines' upper 95 % bounds: random \d+\.\d{3}, popularity \d+\.\d{3}", decision)
    assert any(re.search(r"rows read, [\d,]+ accepted, [\d,]+ quarantined", message) for message in messages)
    assert any(re.match(r"step 30/30: loss \d+\.\d{4}, [\d.]+ windows/s", message) for message in messages)
    assert any(re.match(r"random in FB/paper: R_cumu \d+\.\d{3} ± \d+\.\d{3}", message) for message in messages)

    # The run's artifacts: the MLflow run as a link, figures rounded; the deployment's own automations.
    artifacts = prefect_api(stack, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    link = f"{stack.tracking_uri}/#/experiments/{experiment['experiment']['experiment_id']}/runs/{run_id}"
    keyed = {artifact["key"]: artifact for artifact in artifacts}
    assert f"- MLflow run [`{run_id}`]({link})" in keyed["train-mdt4rec-ml-100k"]["data"]
    assert keyed["train-mdt4rec-ml-100k-mlflow-run"]["data"] == f"[MLflow run {run_id}]({link})"
    (table,) = [a for a in artifacts if a["type"] == "table"]
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert {row["policy"] for row in rows} == {"model", "random", "popularity"}
    assert all(round(row["R_cumu"], 3) == row["R_cumu"] for row in rows)
    automations = prefect_api(stack, "automations/filter", {})
    crash = next(a for a in automations if a["name"] == f"{DEPLOYMENT}: crash runs without heartbeats")
    assert f"prefect.deployment.{stack.deployment()['id']}" in json.dumps(crash["trigger"]["match_related"])
