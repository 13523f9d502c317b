"""Real servers on 127.0.0.1 for the end-to-end tests: a Prefect server, an MLflow server and the serving process
started by ``mdt4rec deploy``; each started here, polled for health and stopped by its PID. The deployment served is
MovieLens-100K's: ``train-mdt4rec/nightly-ml-100k``. Two test modules each run their own stack, so that they can run
on two workers at once.
"""

import os
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

BIN = Path(sys.executable).parent
DEPLOYMENT = "train-mdt4rec/nightly-ml-100k"
MODEL = "mdt4rec"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_process(command: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
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


def stop_process(process: subprocess.Popen) -> int:
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
        return stop_process(server)

    def start_tracking_server(self) -> None:
        """The MLflow server again, on the same port, database and artifacts."""
        log = self.logs / f"mlflow-{len(self.servers)}.log"
        server = start_process(self.tracking_command, self.env, self.work, log)
        self.servers.append(server)
        wait_for(f"{self.tracking_uri}/health", server, log)

    def latest_summary(self) -> str:
        body = {"artifacts": {"key": {"any_": ["train-mdt4rec-ml-100k"]}}, "sort": "CREATED_DESC", "limit": 1}
        return httpx.post(f"{self.prefect_api}/artifacts/filter", json=body, timeout=10).json()[0]["data"]


def running_stack(tmp_path_factory):
    """The servers and the serving process of the tests against real servers, stopped in reverse order when the
    generator is closed (a module-scoped fixture yields from it)."""
    root = tmp_path_factory.mktemp("orchestration")
    work, logs = root / "work", root / "logs"
    work.mkdir()
    logs.mkdir()
    prefect_port, mlflow_port = free_port(), free_port()
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
        prefect = start_process(
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
        mlflow = start_process(tracking_command, env, work, logs / "mlflow.log")
        servers.append(mlflow)
        wait_for(f"http://127.0.0.1:{prefect_port}/api/health", prefect, logs / "prefect.log")
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", mlflow, logs / "mlflow.log")
        deploy = start_process(
            [str(BIN / "mdt4rec"), "deploy", "--dataset", "ml-100k", "--profile", "smoke"],
            env,
            work,
            logs / "deploy.log",
        )
        servers.append(deploy)
        wait_for(f"{env['PREFECT_API_URL']}/deployments/name/{DEPLOYMENT}", deploy, logs / "deploy.log")
        yield Stack(
            env, work, env["PREFECT_API_URL"], env["MLFLOW_TRACKING_URI"], logs, deploy, tracking_command, servers
        )
    finally:
        for process in reversed(servers):
            stop_process(process)


def landed_log(stack: Stack, name: str, rows: int, shift_seconds: int) -> Path:
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


def newest_started_flow_run(stack: Stack) -> dict:
    """The train-mdt4rec run that started last (scheduled runs that never started have no start time)."""
    body = {
        "flows": {"name": {"any_": ["train-mdt4rec"]}},
        "flow_runs": {"start_time": {"is_null_": False}},
        "sort": "START_TIME_DESC",
        "limit": 1,
    }
    return httpx.post(f"{stack.prefect_api}/flow_runs/filter", json=body, timeout=10).json()[0]


def flow_run_logs(stack: Stack, flow_run_id: str, awaited: str, timeout: float = 60) -> list[dict]:
    """The flow run's log records (with its task runs'), oldest first, once one holds ``awaited`` (the server
    stores records a little after the run sent them)."""
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    deadline = time.monotonic() + timeout
    while True:
        logs = httpx.post(f"{stack.prefect_api}/logs/filter", json=body, timeout=10).json()
        if any(awaited in log["message"] for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(1)


def train_task_runs(stack: Stack, flow_run_id: str | None = None) -> list[dict]:
    """Task runs of the ``train`` task (all of them, or of one flow run)."""
    body = {"task_runs": {"name": {"like_": "train-"}}}
    if flow_run_id:
        body["flow_runs"] = {"id": {"any_": [flow_run_id]}}
    runs = httpx.post(f"{stack.prefect_api}/task_runs/filter", json=body, timeout=10).json()
    return [run for run in runs if run["name"].rsplit("-", 1)[0] == "train"]


def serve_deployment(stack: Stack) -> subprocess.Popen:
    """A new serving process for the nightly deployment (stopped with the module's servers), once it polls."""
    log = stack.logs / f"deploy-{len(stack.servers)}.log"
    command = [str(BIN / "mdt4rec"), "deploy", "--dataset", "ml-100k", "--profile", "smoke"]
    serving = start_process(command, stack.env, stack.work, log)
    stack.servers.append(serving)
    deadline = time.monotonic() + 120
    while "being served" not in log.read_text():
        assert serving.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return serving


def create_run(stack: Stack, **parameters) -> str:
    """The id of a new run of the deployment (its default parameters with ``parameters`` over them), created the way
    `prefect deployment run` creates it: through Prefect's client, which retries the answers a busy server gives."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.prefect_api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        return str(client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id)


def await_state(stack: Stack, flow_run_id: str, state_type: str, timeout: float) -> float:
    """Seconds until the flow run is in ``state_type``; fails after ``timeout`` s."""
    started = time.monotonic()
    while True:
        run = httpx.get(f"{stack.prefect_api}/flow_runs/{flow_run_id}", timeout=10).json()
        elapsed = time.monotonic() - started
        if run["state_type"] == state_type:
            return elapsed
        assert elapsed < timeout, f"{run['state_type']} after {elapsed:.0f} s, not {state_type}: {run['state']}"
        time.sleep(0.5)


def mlflow_api(stack: Stack, method: str, path: str, **arguments) -> dict:
    """An answer of the MLflow server's REST API (``GET`` takes query ``arguments``, ``POST`` a JSON body)."""
    url = f"{stack.tracking_uri}/api/2.0/mlflow/{path}"
    answer = (
        httpx.get(url, params=arguments, timeout=30) if method == "GET" else httpx.post(url, json=arguments, timeout=30)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def prefect_api(stack: Stack, path: str, body: dict) -> list[dict]:
    answer = httpx.post(f"{stack.prefect_api}/{path}", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()
