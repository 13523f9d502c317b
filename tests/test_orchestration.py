"""End to end against real servers on 127.0.0.1: a Prefect server, an MLflow server, the serving process started by
``mdt4rec deploy`` and ``mlflow models serve``; each started here, polled for health and stopped by its PID.

The tests run in file order on one store and one registry, as the nightly deployment would live through them. The
deployment served here is MovieLens-100K's: ``train-mdt4rec/nightly-ml-100k``.
"""

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.filterwarnings("ignore")
BIN = Path(sys.executable).parent
DEPLOYMENT = "train-mdt4rec/nightly-ml-100k"
MODEL = "mdt4rec"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[:3]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> int:
    """SIGTERM (background jobs ignore SIGINT), a second one if needed, SIGKILL as the last resort."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


@dataclass
class Stack:
    env: dict
    work: Path
    prefect_api: str
    tracking_uri: str
    logs: Path
    deploy: subprocess.Popen
    tracking_command: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen] = field(default_factory=list)  # stopped in reverse order when the module ends
    killed_run: tuple[str, dt.datetime] | None = None  # a served run killed with its process, and when

    def run(self, *command: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(command),
            env={**self.env, **(env or {})},
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_deployment(self, *parameters: str) -> subprocess.CompletedProcess:
        arguments = [part for p in parameters for part in ("-p", p)]
        return self.run(str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, *arguments, "--watch")

    @property
    def mlflow(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri, self.tracking_uri)

    def versions(self) -> list:
        return sorted(self.mlflow.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))

    def champion(self) -> int:
        return int(self.mlflow.get_model_version_by_alias(MODEL, "champion").version)

    def deployment(self) -> dict:
        return httpx.get(f"{self.prefect_api}/deployments/name/{DEPLOYMENT}", timeout=10).json()

    def stop_tracking_server(self) -> int:
        """SIGTERM to the running MLflow server, by its PID."""
        (server,) = [s for s in self.servers if s.args == self.tracking_command and s.poll() is None]
        return _stop(server)

    def start_tracking_server(self) -> None:
        """The MLflow server again, on the same port, database and artifacts."""
        log = self.logs / f"mlflow-{len(self.servers)}.log"
        server = _start(self.tracking_command, self.env, self.work, log)
        self.servers.append(server)
        _wait_for(f"{self.tracking_uri}/health", server, log)

    def latest_summary(self) -> str:
        body = {"artifacts": {"key": {"any_": ["train-mdt4rec-ml-100k"]}}, "sort": "CREATED_DESC", "limit": 1}
        return httpx.post(f"{self.prefect_api}/artifacts/filter", json=body, timeout=10).json()[0]["data"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("orchestration")
    work, logs = root / "work", root / "logs"
    work.mkdir()
    logs.mkdir()
    prefect_port, mlflow_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "MLFLOW_REGISTRY_URI": f"http://127.0.0.1:{mlflow_port}",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # as with the environment activated
    }
    servers = []
    try:
        prefect = _start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            env,
            work,
            logs / "prefect.log",
        )
        servers.append(prefect)
        tracking_command = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
        ]
        mlflow = _start(tracking_command, env, work, logs / "mlflow.log")
        servers.append(mlflow)
        _wait_for(f"http://127.0.0.1:{prefect_port}/api/health", prefect, logs / "prefect.log")
        _wait_for(f"http://127.0.0.1:{mlflow_port}/health", mlflow, logs / "mlflow.log")
        deploy = _start(
            [str(BIN / "mdt4rec"), "deploy", "--dataset", "ml-100k", "--profile", "smoke"],
            env,
            work,
            logs / "deploy.log",
        )
        servers.append(deploy)
        _wait_for(f"{env['PREFECT_API_URL']}/deployments/name/{DEPLOYMENT}", deploy, logs / "deploy.log")
        yield Stack(
            env, work, env["PREFECT_API_URL"], env["MLFLOW_TRACKING_URI"], logs, deploy, tracking_command, servers
        )
    finally:
        for process in reversed(servers):
            _stop(process)


def _landed_log(stack: Stack, name: str, rows: int, shift_seconds: int) -> Path:
    """A new file in the landing folder: ``rows`` MovieLens-100K events replayed ``shift_seconds`` later."""
    from mdt4rec_core.config import load_dataset_config
    from mdt4rec_core.data.sources import interaction_files

    lines = interaction_files(load_dataset_config("ml-100k"))[0].read_text().splitlines()
    header, body = lines[0], lines[1 : rows + 1]
    shifted = []
    for line in body:
        user, item, rating, timestamp = line.split("\t")
        shifted.append(f"{user}\t{item}\t{rating}\t{int(float(timestamp)) + shift_seconds}")
    path = stack.work / "landing" / "ml-100k" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *shifted]) + "\n")
    return path


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
    _landed_log(stack, "2026-11-30.inter", rows=500, shift_seconds=10_000_000)
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


def _newest_started_flow_run(stack: Stack) -> dict:
    """The train-mdt4rec run that started last (scheduled runs that never started have no start time)."""
    body = {
        "flows": {"name": {"any_": ["train-mdt4rec"]}},
        "flow_runs": {"start_time": {"is_null_": False}},
        "sort": "START_TIME_DESC",
        "limit": 1,
    }
    return httpx.post(f"{stack.prefect_api}/flow_runs/filter", json=body, timeout=10).json()[0]


def _flow_run_logs(stack: Stack, flow_run_id: str, awaited: str, timeout: float = 60) -> list[dict]:
    """The flow run's log records (with its task runs'), oldest first, once one holds ``awaited`` (the server
    stores records a little after the run sent them)."""
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    deadline = time.monotonic() + timeout
    while True:
        logs = httpx.post(f"{stack.prefect_api}/logs/filter", json=body, timeout=10).json()
        if any(awaited in log["message"] for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(1)


def test_a_held_lock_is_in_the_run_log_at_once_and_fails_the_run_after_its_timeout(stack):
    from tests.test_lock_and_failures import hold_writer_lock

    holder = hold_writer_lock(stack.work / "store", "ml-100k")
    try:
        result = stack.run_deployment("profile=smoke", 'overrides=["ingest.lock_timeout_seconds=5"]')
    finally:
        _stop(holder)
    assert result.returncode != 0 and "Failed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    logs = _flow_run_logs(stack, _newest_started_flow_run(stack)["id"], "still held by pid")
    waiting = [i for i, log in enumerate(logs) if "waiting for the lock on ml-100k held by pid" in log["message"]]
    assert waiting, [log["message"][:200] for log in logs]
    first = logs[waiting[0]]
    assert f"held by pid {holder.pid} since " in first["message"] and "waited 0 s" in first["message"]
    started = dt.datetime.fromisoformat(logs[waiting[0] - 1]["timestamp"])  # the record before: the task before
    assert (dt.datetime.fromisoformat(first["timestamp"]) - started).total_seconds() < 5
    assert any(f"the lock on ml-100k is still held by pid {holder.pid}" in log["message"] for log in logs)


def test_stopping_the_serving_process_leaves_the_deployment_unpaused(stack):
    _stop(stack.deploy)
    deployment = stack.deployment()
    assert deployment["paused"] is False and all(s["active"] for s in deployment["schedules"])


def _train_task_runs(stack: Stack, flow_run_id: str | None = None) -> list[dict]:
    """Task runs of the ``train`` task (all of them, or of one flow run)."""
    body = {"task_runs": {"name": {"like_": "train-"}}}
    if flow_run_id:
        body["flow_runs"] = {"id": {"any_": [flow_run_id]}}
    runs = httpx.post(f"{stack.prefect_api}/task_runs/filter", json=body, timeout=10).json()
    return [run for run in runs if run["name"].rsplit("-", 1)[0] == "train"]


def _serve(stack: Stack) -> subprocess.Popen:
    """A new serving process for the nightly deployment (stopped with the module's servers), once it polls."""
    log = stack.logs / f"deploy-{len(stack.servers)}.log"
    command = [str(BIN / "mdt4rec"), "deploy", "--dataset", "ml-100k", "--profile", "smoke"]
    serving = _start(command, stack.env, stack.work, log)
    stack.servers.append(serving)
    deadline = time.monotonic() + 120
    while "being served" not in log.read_text():
        assert serving.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return serving


def _create_run(stack: Stack, **parameters) -> str:
    """The id of a new run of the deployment (its default parameters with ``parameters`` over them), created the way
    `prefect deployment run` creates it: through Prefect's client, which retries the answers a busy server gives."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        return str(client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id)


def _await_state(stack: Stack, flow_run_id: str, state_type: str, timeout: float) -> float:
    """Seconds until the flow run is in ``state_type``; fails after ``timeout`` s."""
    started = time.monotonic()
    while True:
        run = httpx.get(f"{stack.prefect_api}/flow_runs/{flow_run_id}", timeout=10).json()
        elapsed = time.monotonic() - started
        if run["state_type"] == state_type:
            return elapsed
        assert elapsed < timeout, f"{run['state_type']} after {elapsed:.0f} s, not {state_type}: {run['state']}"
        time.sleep(0.5)


def test_a_killed_serving_process_takes_its_running_flow_run_with_it(stack):
    """kill -9 of the serving process and the run's processes while the run trains. The heartbeat automation sets
    it Crashed a minute or so later; the tests after this one run meanwhile, and a later one checks the outcome."""
    import psutil

    serving = stack.deploy if stack.deploy.poll() is None else _serve(stack)
    flow_run_id = _create_run(stack, force=True)
    deadline = time.monotonic() + 300
    while not _train_task_runs(stack, flow_run_id):
        assert time.monotonic() < deadline, "the run did not reach its train task"
        time.sleep(0.2)
    children = psutil.Process(serving.pid).children(recursive=True)  # the flow run's process and its helpers
    assert children
    for pid in (serving.pid, *(child.pid for child in children)):
        os.kill(pid, signal.SIGKILL)
    stack.killed_run = flow_run_id, dt.datetime.now(dt.UTC)
    serving.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert httpx.get(f"{stack.prefect_api}/flow_runs/{flow_run_id}", timeout=10).json()["state_type"] == "RUNNING"


def test_a_failing_validation_fails_the_flow_with_its_report_and_registers_nothing(stack):
    from tests.test_lock_and_failures import READER_CLOCK_AHEAD

    # Events decades ahead, read by a process that takes them for current ones: the interaction suite fails on them.
    bad = _landed_log(stack, "2026-12-01.inter", rows=20, shift_seconds=40 * 365 * 86400)
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
    flow_run_id = _newest_started_flow_run(stack)["id"]
    assert any(named in log["message"] for log in _flow_run_logs(stack, flow_run_id, named))
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
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"},
    )
    assert result.returncode == 2 and "cannot be reached" in result.stderr, result.stderr[-3000:]
    assert [int(v.version) for v in stack.versions()] == [1, 2, 3]


def test_the_champion_is_served_by_mlflow_models_serve(stack):
    from mdt4rec_core.config import load_run_config

    port = _free_port()
    log = stack.logs / "serve.log"
    serve = _start(
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
        _wait_for(f"http://127.0.0.1:{port}/ping", serve, log)
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
        _stop(serve)


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


def test_a_run_whose_tracking_server_went_away_is_registered_by_the_next_without_training_again(stack):
    _landed_log(stack, "2026-12-02.inter", rows=300, shift_seconds=20_000_000)
    versions, trainings = len(stack.versions()), len(_train_task_runs(stack))
    fast = ["evaluation.episodes=5", "evaluation.seeds=1", "tracking.retries=1"]
    command = [str(BIN / "mdt4rec"), "pipeline", "--profile", "smoke", "-d", "ml-100k", "--json"]
    command += [part for assignment in fast for part in ("--set", assignment)]
    log = stack.logs / "pipeline-tracking-gone.log"
    first = _start(command, stack.env, stack.work, log)
    try:
        deadline = time.monotonic() + 600
        while len(_train_task_runs(stack)) == trainings:  # the server is not called again until registration
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        stack.stop_tracking_server()
        try:
            first.wait(timeout=600)
        finally:
            stack.start_tracking_server()
    finally:
        _stop(first)
    errors = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    assert first.returncode == 2 and len(errors) == 1, log.read_text()[-3000:]
    assert errors[0].startswith(f"error: MLflow at {stack.tracking_uri} stopped answering (Connection refused); ")
    assert errors[0].endswith("registers it without training again")
    assert len(stack.versions()) == versions

    second = stack.run(*command)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["training"]["reused"] and f"the checkpoint {summary['training']['checkpoint']} is kept" in errors[0]
    second = _newest_started_flow_run(stack)
    assert second["state_type"] == "COMPLETED" and _train_task_runs(stack, second["id"]) == []
    newest = stack.versions()[-1]
    assert len(stack.versions()) == versions + 1 and newest.tags["checkpoint"] == summary["training"]["checkpoint"]
    assert "Training: reused `" in stack.latest_summary()


def test_the_killed_run_turned_crashed_after_its_heartbeats_stopped_and_freed_the_slot(stack):
    from mdt4rec_core.config import load_run_config

    settings = load_run_config("smoke", "ml-100k").deployment
    assert settings.crash_after_seconds == 60 and stack.killed_run is not None
    flow_run_id, killed_at = stack.killed_run
    # The last heartbeat came at most heartbeat_seconds before the kill; the automation looks every few seconds.
    bound = settings.crash_after_seconds + 30
    waited = (dt.datetime.now(dt.UTC) - killed_at).total_seconds()
    _await_state(stack, flow_run_id, "CRASHED", timeout=max(bound - waited, 1))
    state = httpx.get(f"{stack.prefect_api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]
    crashed_after = (dt.datetime.fromisoformat(state["timestamp"]) - killed_at).total_seconds()
    print(f"Crashed {crashed_after:.0f} s after the kill (bound {bound} s)")
    assert settings.crash_after_seconds - settings.heartbeat_seconds <= crashed_after <= bound
    assert stack.deployment()["global_concurrency_limit"]["active_slots"] == 0

    _serve(stack)
    next_run = _create_run(stack, force=True)  # trains (the data may have been trained on), so it can be cancelled
    assert _await_state(stack, next_run, "RUNNING", timeout=60) < 60  # the slot's lease would hold it for 300 s
    httpx.post(
        f"{stack.prefect_api}/flow_runs/{next_run}/set_state", json={"state": {"type": "CANCELLING"}}, timeout=10
    )
    _await_state(stack, next_run, "CANCELLED", timeout=60)


def _mlflow_api(stack: Stack, method: str, path: str, **arguments) -> dict:
    """An answer of the MLflow server's REST API (``GET`` takes query ``arguments``, ``POST`` a JSON body)."""
    url = f"{stack.tracking_uri}/api/2.0/mlflow/{path}"
    answer = (
        httpx.get(url, params=arguments, timeout=30) if method == "GET" else httpx.post(url, json=arguments, timeout=30)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _prefect_api(stack: Stack, path: str, body: dict) -> list[dict]:
    answer = httpx.post(f"{stack.prefect_api}/{path}", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_nightly_run_is_traced_in_mlflow_and_in_its_prefect_logs(stack):
    from mdt4rec_core.config import load_run_config

    if not any(process.poll() is None and "deploy" in process.args for process in stack.servers):
        _serve(stack)  # the serving process an earlier test killed
    overrides = ["evaluation.gate.baselines=[random,popularity]", "evaluation.episodes=20"]
    result = stack.run_deployment("profile=smoke", "force=true", f"overrides={json.dumps(overrides)}")
    assert result.returncode == 0 and "Completed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    flow_run_id = _newest_started_flow_run(stack)["id"]
    resolved = load_run_config("smoke", "ml-100k", overrides)

    # MLflow, through its REST API: the run of this flow run, its settings, code, data, losses and figures.
    experiment = _mlflow_api(stack, "GET", "experiments/get-by-name", experiment_name="mdt4rec-ml-100k")
    found = _mlflow_api(
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
    version = _mlflow_api(stack, "GET", "model-versions/get", name=MODEL, version=tags["registered_version"])
    trajectory_version = {t["key"]: t["value"] for t in version["model_version"]["tags"]}["trajectory_version"]
    assert trained_on["dataset"]["name"] == "ml-100k-trajectories"
    assert trained_on["dataset"]["digest"] == trajectory_version
    assert json.loads(trained_on["dataset"]["source"])["uri"].endswith(f"/version={trajectory_version}")
    history = _mlflow_api(stack, "GET", "metrics/get-history", run_id=run_id, metric_key="train_loss")["metrics"]
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
        run["name"] for run in _prefect_api(stack, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    }
    assert {
        "prepare-environment-paper",
        "evaluate-baseline-random-FB-paper",
        "evaluate-baseline-popularity-FB-paper",
    } <= names
    (subflow,) = _prefect_api(stack, "flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
    evaluated = {
        run["name"] for run in _prefect_api(stack, "task_runs/filter", {"flow_runs": {"id": {"any_": [subflow["id"]]}}})
    }
    assert evaluated == {
        f"evaluate-{mode}-{protocol}" for mode in ("FB", "NX_0", "NX_10") for protocol in ("paper", "strict")
    }
    messages = [log["message"] for log in _flow_run_logs(stack, flow_run_id, "gate decision: ")]
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
    artifacts = _prefect_api(stack, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    link = f"{stack.tracking_uri}/#/experiments/{experiment['experiment']['experiment_id']}/runs/{run_id}"
    keyed = {artifact["key"]: artifact for artifact in artifacts}
    assert f"- MLflow run [`{run_id}`]({link})" in keyed["train-mdt4rec-ml-100k"]["data"]
    assert keyed["train-mdt4rec-ml-100k-mlflow-run"]["data"] == f"[MLflow run {run_id}]({link})"
    (table,) = [a for a in artifacts if a["type"] == "table"]
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert {row["policy"] for row in rows} == {"model", "random", "popularity"}
    assert all(round(row["R_cumu"], 3) == row["R_cumu"] for row in rows)
    automations = _prefect_api(stack, "automations/filter", {})
    crash = next(a for a in automations if a["name"] == f"{DEPLOYMENT}: crash runs without heartbeats")
    assert f"prefect.deployment.{stack.deployment()['id']}" in json.dumps(crash["trigger"]["match_related"])
