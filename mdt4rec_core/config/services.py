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


class DeploymentConfig(StrictModel):
    """The scheduled deployment of the ``train-mdt4rec`` flow."""

    name: str = "nightly"
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    work_pool: str = "mdt4rec-process"
    heartbeat_seconds: int = Field(30, ge=30, description="a served flow run sends a heartbeat this often")
    crash_after_seconds: int = Field(
        90, description="a served run with no heartbeat for this long is set Crashed, its concurrency slot released"
    )

    @model_validator(mode="after")
    def _crash_after_outlasts_heartbeats(self) -> DeploymentConfig:
        if self.crash_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("deployment.crash_after_seconds must be at least twice deployment.heartbeat_seconds")
        return self
