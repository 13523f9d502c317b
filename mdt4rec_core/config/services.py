"""Settings of the services a run talks to: MLflow tracking, the served model, the Prefect deployment."""

from __future__ import annotations

from pydantic import Field, model_validator

from mdt4rec_core.config.base import StrictModel


class TrackingConfig(StrictModel):
    """Where MLflow keeps runs and models when MLFLOW_TRACKING_URI is not set (an embedded sqlite file), and how
    long its requests retry a server that does not answer."""

    uri: str = Field("sqlite:///mlflow.db", description="tracking and registry URI; MLFLOW_TRACKING_URI wins")
    artifacts: str = Field("mlartifacts", description="artifact folder of experiments this project creates")
    model_name: str = Field("mdt4rec", description="registered model name")
    retries: int = Field(4, ge=0, description="retries of a tracking or registry request that got no answer")
    backoff_seconds: int = Field(
        2, ge=0, description="back-off factor: the waits between retries are 0, 2x, 4x, 8x ... this many seconds"
    )
    timeout_seconds: int = Field(60, ge=1, description="seconds one tracking or registry request waits for an answer")


class ServingConfig(StrictModel):
    """Limits of the served model (``mlflow models serve``): a request beyond them is refused with status 400."""

    max_users_per_request: int = Field(1000, ge=1, description="rows (one user each) a single request may hold")


class TaskTimeouts(StrictModel):
    """Seconds a step of the ``train-mdt4rec`` flow may run before it fails (Prefect's ``timeout_seconds``): a guard
    against a step that hangs, well above what the step takes on the slowest profile."""

    connect_tracking: int = Field(60, ge=1, description="one attempt at reaching the tracking server")
    ingest: int = Field(
        7200, ge=1, description="each ingest step: plan, read, validate or store a batch, side tables, trajectories"
    )
    prepare_environment: int = Field(7200, ge=1, description="building (or reusing) one protocol's simulator")
    train: int = Field(172_800, ge=1, description="the training")
    evaluate: int = Field(
        43_200,
        ge=1,
        description="the new checkpoint's evaluations together; each gate baseline; the champion's re-evaluation",
    )
    tracking: int = Field(
        3600,
        ge=1,
        description="starting the MLflow run; logging its results and the model and registering it (plus "
        "evaluate when the champion is re-evaluated)",
    )


class DeploymentConfig(StrictModel):
    """The scheduled deployment of the ``train-mdt4rec`` flow, and how its runs report and time out."""

    name: str = Field("nightly", description="the deployment of default_dataset; another dataset's is <name>-<dataset>")
    default_dataset: str = Field("ml-1m", description="the dataset whose deployment is called plainly <name>")
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    work_pool: str = "mdt4rec-process"
    heartbeat_seconds: int = Field(30, ge=30, description="a served flow run sends a heartbeat this often")
    crash_after_seconds: int = Field(
        90, description="a served run with no heartbeat for this long is set Crashed, its concurrency slot released"
    )
    progress_every_steps: int = Field(
        100, ge=1, description="a run logs training's loss and windows/s (and sends its losses to MLflow) this often"
    )
    timeouts: TaskTimeouts = TaskTimeouts()

    def name_for(self, dataset: str) -> str:
        """The deployment of ``dataset``: ``name`` for the default dataset, ``<name>-<dataset>`` for any other, so
        that each dataset keeps its own schedule and runs."""
        return self.name if dataset == self.default_dataset else f"{self.name}-{dataset}"

    @model_validator(mode="after")
    def _crash_after_outlasts_heartbeats(self) -> DeploymentConfig:
        if self.crash_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("deployment.crash_after_seconds must be at least twice deployment.heartbeat_seconds")
        return self
