"""The one way this project makes a Prefect task from a plain function of ``tasks`` or ``mdt4rec_core``, and the
logger its steps report through. Prefect is imported when a task is made or a run is under way, so that the plain
chains (``mdt4rec ingest``) start without it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any


def as_task(function: Callable, name: str | None = None, **options: Any):
    """``function`` as a Prefect task named ``name`` (default: the function's name with dashes), with Prefect's task
    ``options`` (e.g. ``task_run_name``). Results are never cached: each step reads the store as it is now."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    send_core_logs_to_runs()
    return task(function, name=name or function.__name__.replace("_", "-"), cache_policy=NO_CACHE, **options)


def in_a_run() -> bool:
    """Whether this runs inside a Prefect flow or task run (never where Prefect was not even imported)."""
    if "prefect.context" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Inside a flow or task run, the run's logger (its lines are the run's log in the Prefect UI and on the
    console); elsewhere the ``mdt4rec`` logger."""
    if not in_a_run():
        return logging.getLogger("mdt4rec")
    from prefect.logging import get_run_logger

    return get_run_logger()


def send_core_logs_to_runs() -> None:
    """Send what ``mdt4rec_core`` logs into the log of the Prefect run it happens in (it reaches the console through
    the root logger either way); once per process."""
    from prefect.logging.handlers import APILogHandler

    core = logging.getLogger("mdt4rec_core")
    if any(isinstance(handler, APILogHandler) for handler in core.handlers):
        return
    handler = APILogHandler()
    handler.addFilter(lambda _record: in_a_run())
    core.addHandler(handler)
