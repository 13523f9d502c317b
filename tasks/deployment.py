"""What keeps the served deployment's runs honest when processes die.

* Flow runs started by the serving process send a heartbeat event every ``deployment.heartbeat_seconds``
  (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, set for the serving process and so inherited by its flow-run children).
* Two automations per deployment on the Prefect server act on its runs whose process is gone: a run that sent no
  heartbeat for ``deployment.crash_after_seconds`` is set Crashed, and a cancelled run that did not finish
  cancelling within that time is set Cancelled. Either state change releases the deployment's concurrency slot at
  once.
* A flow-run process whose parent (the serving process or a worker) died terminates itself (:func:`exit_with_parent`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.runtime import deployment

from mdt4rec_core.config import DeploymentConfig

HEARTBEAT_SETTING = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
PARENT_POLL_SECONDS = 2
TERMINATION_GRACE_SECONDS = 60
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
FINAL_EVENTS = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}

logger = logging.getLogger(__name__)


def send_heartbeats(settings: DeploymentConfig) -> None:
    """Make the flow runs this process starts send heartbeats every ``settings.heartbeat_seconds``."""
    os.environ[HEARTBEAT_SETTING] = str(settings.heartbeat_seconds)


def _trigger(deployment_id: UUID, after: str, expect: set[str], within: int) -> EventTrigger:
    """A proactive trigger that fires for a run of the deployment ``deployment_id`` when ``after`` is not followed
    by ``expect`` (heartbeats and state changes both name the run's deployment by its id)."""
    return EventTrigger(
        after={after},
        expect=expect,
        match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
        match_related=ResourceSpecification(
            {"prefect.resource.role": "deployment", "prefect.resource.id": f"prefect.deployment.{deployment_id}"}
        ),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=within),
    )


def process_loss_automations(deployment: str, deployment_id: UUID, settings: DeploymentConfig) -> list[AutomationCore]:
    """The automations that end runs of the deployment ``deployment`` (``<flow>/<name>``, its id ``deployment_id``)
    whose process is gone: silent ones turn Crashed, stuck cancellations turn Cancelled."""
    within = settings.crash_after_seconds
    crashed = AutomationCore(
        name=f"{deployment}: crash runs without heartbeats",
        description=f"A run of {deployment} that sent no heartbeat for {within} s lost its process.",
        trigger=_trigger(deployment_id, HEARTBEAT_EVENT, {HEARTBEAT_EVENT, *FINAL_EVENTS}, within),
        actions=[
            ChangeFlowRunState(state=StateType.CRASHED, message=f"No heartbeat for {within} s: the process is gone.")
        ],
    )
    cancelled = AutomationCore(
        name=f"{deployment}: finish stuck cancellations",
        description=f"A run of {deployment} still cancelling after {within} s has no process left to stop.",
        trigger=_trigger(deployment_id, "prefect.flow-run.Cancelling", FINAL_EVENTS, within),
        actions=[
            ChangeFlowRunState(
                state=StateType.CANCELLED, message=f"Still cancelling after {within} s: the process is gone."
            )
        ],
    )
    return [crashed, cancelled]


FLOW_WIDE_AUTOMATIONS = ("train-mdt4rec: crash runs without heartbeats", "train-mdt4rec: finish stuck cancellations")
"""Names of the automations an earlier release created for every run of the flow; the per-deployment ones replace
them."""


def install_automations(automations: list[AutomationCore]) -> None:
    """Create each automation, or update the one of the same name (so serving again changes nothing twice); delete
    the flow-wide ones an earlier release created, which would act on every deployment's runs beside these."""
    with get_client(sync_client=True) as client:
        for name in FLOW_WIDE_AUTOMATIONS:
            for old in client.read_automations_by_name(name):
                client.delete_automation(old.id)
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
            else:
                client.create_automation(automation)


def exit_with_parent() -> None:
    """In a deployment's run (its process started by a serving process or a worker), terminate this process when
    its parent dies: the parent is polled every few seconds; on loss, SIGTERM lets Prefect mark the run Crashed,
    and the process exits outright if it is still there a minute later."""
    if deployment.id is None:
        return
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), name="exit-with-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    """Wait until this process's parent is no longer ``parent``, then terminate this process."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    logger.error("the process that started this flow run (pid %d) is gone: stopping the run", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(TERMINATION_GRACE_SECONDS)
    os._exit(1)
