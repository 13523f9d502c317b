"""The one way this project makes a Prefect task from a plain function of ``tasks`` or ``mdt4rec_core``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE


def as_task(function: Callable, name: str | None = None, **options: Any) -> Task:
    """``function`` as a Prefect task named ``name`` (default: the function's name with dashes), with Prefect's task
    ``options`` (e.g. ``task_run_name``). Results are never cached: each step reads the store as it is now."""
    return task(function, name=name or function.__name__.replace("_", "-"), cache_policy=NO_CACHE, **options)
