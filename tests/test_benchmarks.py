"""The benchmark scripts run end to end at tiny sizes: ``benchmarks/gpu.py --dry-run`` (the script a GPU machine runs
once, checked here on the CPU) and the search benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("plain DT (no search)", "cached search", "re-encoding search", "one-at-a-time loop")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_gpu_benchmark_runs_every_part_on_the_cpu_with_dry_run(tmp_path):
    run("gpu.py", "--dry-run", "--out", str(tmp_path))
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] and result["device_name"] == "CPU"
    runs = [(row["batch_size"], row["compiled"]) for row in result["training"]]
    assert runs == [(2, False), (4, False), (2, True)]  # the last with the backbone compiled
    for row in result["training"]:
        assert row["windows_per_second"] > 0
        assert row["tokens_per_second"] == pytest.approx(row["windows_per_second"] * 3 * 4)
        assert 0 < row["mfu"] < 1 and row["flops_per_token"] == 4 * row["backbone_parameters"]  # LoRA: 4N
    assert [row["episodes"] for row in result["search"]] == [3, 5]
    for row in result["search"]:
        assert all(row[method] > 0 for method in METHODS)
        assert row["cached_vs_plain"] == pytest.approx(row["cached search"] / row["plain DT (no search)"])
    assert result["evaluation"]["episodes"] == 6 and result["evaluation"]["episodes_per_second"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert "| 4 |" in table and "| 2 (compiled) |" in table and "MFU" in table and "loop / cached" in table


def test_the_search_benchmark_compares_the_methods_over_whole_episodes():
    result = run(
        "inference.py",
        "--preset",
        "tiny",
        "--episodes",
        "4",
        "--steps",
        "24",
        "--loop-episodes",
        "1",
        "--items",
        "50",
    )
    figures = json.loads(result.stdout.splitlines()[-1])["synthetic"]
    assert set(figures["seconds_per_decision"]) == set(METHODS)
    assert figures["loop_vs_cached"] > 1  # the loop re-runs every candidate alone
