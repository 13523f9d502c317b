"""The one way this project makes a Prefect task from a plain function of ``tasks`` or ``mdt4rec_core``, and the
logger its steps report through."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def as_task(function: Callable, name: str | None = None, **options: Any) -> Task:
    """``function`` as a Prefect task named ``name`` (default: the function's name with dashes), with Prefect's task
    ``options`` (e.g. ``task_run_name``). Results are never cached: each step reads the store as it is now."""
    return task(function, name=name or function.__name__.replace("_", "-"), cache_policy=NO_CACHE, **options)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Inside a flow or task run, the run's logger (its lines are the run's log in the Prefect UI and on the
    console); elsewhere the ``mdt4rec`` logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("mdt4rec")
