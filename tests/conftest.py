import os

for name, value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ[name] = value

from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run: a CI failure can be reproduced, and a pass is not luck.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def ingest(tmp_path):
    """Run the plain ingest chain on a raw file or folder into a per-test store; returns (summary, store)."""
    from mdt4rec_core.config import RunConfig, TrajectoryConfig, resolve_dataset
    from mdt4rec_core.data.store import Store
    from tasks.ingest import run_ingest

    store_root = tmp_path / "store"

    def run(source, format="csv", dataset="log", **trajectory):
        config = RunConfig(dataset=dataset, store=str(store_root), trajectories=TrajectoryConfig(**trajectory))
        summary = run_ingest(config, resolve_dataset(dataset, str(source) if source else None, format))
        return summary, Store(store_root)

    return run


def stored(store, dataset="log") -> pl.DataFrame:
    scan = store.scan_interactions(dataset)
    return pl.DataFrame() if scan is None else scan.collect()


def quarantined(store, dataset="log") -> pl.DataFrame:
    scan = store.scan_quarantine(dataset)
    return pl.DataFrame() if scan is None else scan.collect().sort("file", "row")


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    """mlflow.set_tracking_uri / set_registry_uri also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into
    os.environ: put them back after each test, so that no test's MLflow leaks into the servers a later test starts."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# The modules that take longest, started first when the suite runs on several workers (`make test`: one module per
# worker), so that none of them starts last and leaves the other workers idle at the end.
LONGEST_FIRST = ("test_orchestration", "test_train", "test_cli", "test_scoring", "test_study", "test_pipeline_command")


def pytest_collection_modifyitems(items):
    def rank(item):
        module = item.path.stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module and among the other modules is kept
