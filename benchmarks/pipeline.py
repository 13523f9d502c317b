"""Wall time of the README run command's flow (train-mdt4rec, in-process, Prefect ephemeral API, MLflow on sqlite) and
the duration of each stage, read back from the Prefect task runs of that flow run.

Runs in a fresh working folder (new store, new MLflow database), so the environments are built, not reused.

    python benchmarks/pipeline.py [--profile cpu] [--dataset ml-1m]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def _stage_seconds(flow_run_id) -> dict[str, float]:
    """Total run time per task name, summed over repeats (so concurrent evaluations add up), over the flow run and
    its subflows (a subflow shows up as a task run of its own: its wall time)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(run.id for run in children)]
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    totals: dict[str, float] = defaultdict(float)
    for run in sorted(runs, key=lambda r: r.start_time or r.expected_start_time):
        totals[run.name.rsplit("-", 1)[0]] += run.total_run_time.total_seconds()
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--dataset", default="ml-1m")
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="mdt4rec-pipeline-"))

    from flows.train_mdt4rec import train_mdt4rec

    started = time.perf_counter()
    state = train_mdt4rec(profile=args.profile, dataset=args.dataset, return_state=True)
    wall = time.perf_counter() - started
    summary = state.result()
    stages = asyncio.run(_stage_seconds(state.state_details.flow_run_id))
    print(f"train-mdt4rec, profile {args.profile}, {args.dataset}: {wall:.1f} s wall (after imports), in {os.getcwd()}")
    for name, seconds in stages.items():
        print(f"  {name:<22} {seconds:8.1f} s")
    print(json.dumps({"wall_seconds": wall, "stages": stages, "evaluation": summary.get("evaluation")}))


if __name__ == "__main__":
    main()
