"""The study end to end on the smoke budget (MovieLens-100K, every arm, both protocols, one seed, few episodes):
rows, resumability, the store's current trajectory set, MLflow runs, the RESULTS section, the CLI and the flow."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from mdt4rec_cli.main import app
from mdt4rec_core.config import RunConfig, TrackingConfig, TrajectoryConfig, resolve_dataset
from mdt4rec_core.data.store import Store
from mdt4rec_core.data.trajectories import stored_stats
from mdt4rec_core.envs.simulator import MODE_SPECS
from mdt4rec_core.errors import ConfigError, InputError
from mdt4rec_core.study import ARMS
from tasks import study
from tasks.ingest import run_ingest

# Small enough for the test (~1 s a cell on one core); the numbers mean nothing.
SMALL = ["episodes=10", "train.max_steps=4", "sasrec.max_steps=2", "offline_rl.steps=2"]
CURRENT = "trajectories/dataset=ml-100k/CURRENT.json"


def _strict_json(text: str):
    """JSON as the standard has it: NaN or Infinity are an error."""

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke study on a store whose current trajectory set is a session-cut set, so that neither quit-aware set
    the study builds is the current one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one core trains faster than two contended ones
    work = tmp_path_factory.mktemp("study")
    store = work / "store"
    pipeline = RunConfig(dataset="ml-100k", store=str(store), trajectories=TrajectoryConfig(cut_by="session"))
    run_ingest(pipeline, resolve_dataset("ml-100k"))
    current = Store(store).read_json(CURRENT)
    started = time.perf_counter()
    result = study.run_study("smoke", 1, str(store), work / "studies", SMALL)
    seconds = time.perf_counter() - started
    yield SimpleNamespace(work=work, store=store, out=work / "studies", current=current, result=result, seconds=seconds)
    torch.set_num_threads(threads)


def test_every_arm_mode_and_protocol_has_a_row(smoke):
    config = study.load_budget("smoke", SMALL)
    assert config.arms == list(ARMS)  # the smoke budget runs every arm
    result = smoke.result
    keys = {(r["protocol"], r["arm"], r["mode"]) for r in result["rows"]}
    assert keys == {(p, a, m) for p in config.protocols for a in config.arms for m in config.modes}
    assert len(result["rows"]) == len(keys) and result["cells_reused"] == 0
    for row in result["rows"]:
        assert math.isfinite(row["R_cumu"]) and row["episodes"] == 10 and row["seeds"] == 1, row
        cap = MODE_SPECS[row["mode"]].max_steps
        assert (row["Length"] == 10) if row["mode"] == "NX_10" else (1 <= row["Length"] <= cap), row
        assert ARMS[row["arm"]].kind != "model" or math.isfinite(row["held_out_action_ce"]), row
    for cell in result["cells"]:
        record = json.loads((Path(cell["folder"]) / "cell.json").read_text())
        for mode, log in record["modes"].items():
            cap = MODE_SPECS[mode].max_steps
            assert all((n == 10) if mode == "NX_10" else (1 <= n <= cap) for n in log["lengths"]), (cell, mode)
    model_rows = [r for r in result["rows"] if ARMS[r["arm"]].kind == "model" and r["mode"] == "FB"]
    assert all(sum(r["chosen_history_lengths"].values()) > 0 for r in model_rows)


def test_the_study_writes_its_json_table_and_plot(smoke):
    paths = smoke.result["paths"]
    assert Path(paths["folder"]) == smoke.out / "ml-100k-smoke"
    written = _strict_json(Path(paths["json"]).read_text())
    assert written["rows"] == smoke.result["rows"] and written["config"]["episodes"] == 10
    assert written["command"].startswith("mdt4rec study --budget smoke --seeds 1 --store ")
    assert Path(paths["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = Path(paths["markdown"]).read_text()
    for protocol in ("paper", "strict"):
        assert f"#### Protocol `{protocol}`" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(table) == 2 * len(ARMS)
    assert "| R_cumu FB | R_cumu NX_0 | R_cumu NX_10 | Length FB | R_avg FB | distinct items FB | CE |" in markdown
    assert "- `mdt4rec`: " in markdown and "decisions)" in markdown


def test_the_trajectory_sets_leave_the_current_set_alone(smoke):
    store = Store(smoke.store)
    assert store.read_json(CURRENT) == smoke.current
    versions = {c["protocol"]: c["trajectory_version"] for c in smoke.result["cells"]}
    assert versions["paper"] != versions["strict"]
    assert smoke.current["version"] not in versions.values()
    for version in versions.values():
        assert stored_stats(store, "ml-100k", version) is not None


def test_a_rerun_reuses_every_cell(smoke):
    cells = sorted(smoke.out.glob("ml-100k-smoke/*/*/seed-*/cell.json"))
    assert len(cells) == len(smoke.result["cells"]) == 2 * len(ARMS)
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in cells}
    started = time.perf_counter()
    again = study.run_study("smoke", 1, str(smoke.store), smoke.out, SMALL)
    seconds = time.perf_counter() - started
    assert again["cells_reused"] == len(cells) and again["cells_run"] == 0
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in cells} == before
    assert again["rows"] == smoke.result["rows"]
    assert seconds < max(15.0, smoke.seconds / 2), (seconds, smoke.seconds)


def test_a_study_folder_refuses_other_settings_or_other_data(smoke, tmp_path):
    with pytest.raises(InputError, match=r"other settings \(episodes differ\)"):
        study.run_study("smoke", 1, str(smoke.store), smoke.out, [*SMALL, "episodes=5"])
    folder = tmp_path / "cell"
    folder.mkdir()
    record = json.loads(next(smoke.out.glob("ml-100k-smoke/paper/random/seed-0/cell.json")).read_text())
    (folder / "cell.json").write_text(json.dumps({**record, "trajectory_version": "older"}))
    inputs = SimpleNamespace(
        trajectories=SimpleNamespace(stats=SimpleNamespace(version=record["trajectory_version"])),
        environment=SimpleNamespace(info=SimpleNamespace(version=record["environment_version"])),
    )
    config = study.load_budget("smoke", SMALL)
    with pytest.raises(InputError, match="the data changed"):
        study.run_study_cell(inputs, config, study.Cell("paper", "random", 0, folder))


def test_a_study_folder_recorded_before_a_setting_existed_takes_its_default(tmp_path):
    config = study.load_budget("smoke", SMALL)
    recorded = config.model_dump(mode="json", exclude={"arms", "protocols", "log_rule"})
    (tmp_path / "settings.json").write_text(json.dumps(recorded))
    study.check_study_folder(tmp_path, config)  # no finished cell can depend on log_rule
    with pytest.raises(InputError, match=r"other settings \(log_rule.min_distance differ\)"):
        study.check_study_folder(tmp_path, study.load_budget("smoke", [*SMALL, "log_rule.min_distance=0.5"]))


def test_mlflow_gets_a_parent_run_and_a_child_per_protocol_and_arm(smoke, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{smoke.work / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    logged = study.log_study(TrackingConfig(artifacts=str(smoke.work / "mlartifacts")), smoke.result)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mdt4rec-study-ml-100k")
    assert experiment.artifact_location == (smoke.work / "mlartifacts" / "mdt4rec-study-ml-100k").as_uri()
    parent = client.get_run(logged["parent_run_id"])
    assert parent.info.run_name == "study-smoke" and parent.info.status == "FINISHED"
    assert {k: parent.data.tags[k] for k in ("budget", "dataset", "seeds")} == {
        "budget": "smoke",
        "dataset": "ml-100k",
        "seeds": "1",
    }
    assert parent.data.params["episodes"] == "10" and parent.data.params["train.max_steps"] == "4"
    assert json.loads(parent.data.params["arms"]) == list(ARMS)
    assert parent.data.metrics["cell_seconds"] > 0 and parent.data.metrics["cells_run"] == 2 * len(ARMS)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"study.json", "study.md", "r_cumu.png"}

    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=1000
    )
    assert sorted(r.info.run_name for r in children) == sorted(f"{p}/{a}" for p in ("paper", "strict") for a in ARMS)
    for child in children:
        protocol, arm = child.info.run_name.split("/")
        params, metrics = child.data.params, child.data.metrics
        assert (params["arm"], params["protocol"], params["kind"]) == (arm, protocol, ARMS[arm].kind)
        assert params["description"] == ARMS[arm].description and params["study.episodes"] == "10"
        for mode in ("FB", "NX_0", "NX_10"):
            assert {f"R_cumu_{mode}", f"R_cumu_ci95_{mode}", f"Length_{mode}", f"R_avg_{mode}"} <= set(metrics)
            assert f"distinct_items_{mode}" in metrics
        assert metrics["Length_NX_10"] == 10
        assert ARMS[arm].kind != "model" or "held_out_action_ce" in metrics
    edt = next(c for c in children if c.info.run_name == "paper/dt")
    assert edt.data.params["arm.search.search"] == "false" and edt.data.params["arm.model.embedding"] == "linear"


def test_parameter_values_fit_mlflow():
    long = study._param_value("x" * 10_000)
    assert len(long) <= study.PARAM_LIMIT and long.endswith("[truncated]")
    assert study._param_value([1, 2]) == "[1, 2]" and study._param_value("tiny") == "tiny"


def test_the_results_section_is_replaced_not_repeated(smoke, tmp_path):
    results = tmp_path / "RESULTS.md"
    other = "<!-- study:ml-1m:cpu:begin -->\nkeep me\n<!-- study:ml-1m:cpu:end -->"
    results.write_text(f"# Results\n\nIntro.\n\n{other}\n\nOutro.\n")
    markdown = Path(smoke.result["paths"]["markdown"]).read_text()
    study.replace_section(results, "ml-100k", "smoke", "old table\n")
    study.replace_section(results, "ml-100k", "smoke", markdown)
    study.replace_section(results, "ml-100k", "smoke", markdown)
    text = results.read_text()
    assert text.count("<!-- study:ml-100k:smoke:begin -->") == text.count("<!-- study:ml-100k:smoke:end -->") == 1
    assert "old table" not in text and markdown.strip() in text
    assert text.startswith("# Results\n\nIntro.\n\n" + other + "\n\nOutro.\n")
    fresh = tmp_path / "NEW.md"
    study.replace_section(fresh, "ml-100k", "smoke", markdown)
    assert fresh.read_text().startswith("<!-- study:ml-100k:smoke:begin -->\n### Study `smoke`")


def test_the_cli_runs_a_study_logs_it_and_prints_json(tmp_path):
    """On an empty store: the study ingests the dataset first."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n")
    arms = ["random", "popularity", "mdt4rec"]
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "mdt4rec_cli", "study", "--budget", "smoke", "--seeds", "1"]
    command += ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "studies"), "--results", str(results)]
    command += [part for assignment in [*SMALL, f"arms=[{','.join(arms)}]"] for part in ("--set", assignment)]
    result = subprocess.run([*command, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _strict_json(result.stdout.strip().splitlines()[-1])
    assert {(r["protocol"], r["arm"]) for r in summary["rows"]} == {(p, a) for p in ("paper", "strict") for a in arms}
    assert len(summary["rows"]) == 2 * len(arms) * 3 and summary["cells_run"] == 2 * len(arms)
    assert summary["mlflow"]["tracking_uri"] == env["MLFLOW_TRACKING_URI"]
    assert len(summary["mlflow"]["child_run_ids"]) == 2 * len(arms)
    assert (tmp_path / "mlartifacts" / "mdt4rec-study-ml-100k").is_dir()
    assert Store(tmp_path / "store").scan_interactions("ml-100k") is not None
    assert "#### Protocol `strict`" in result.stderr and "| `mdt4rec` |" in result.stderr
    text = results.read_text()
    assert text.startswith("# Results\n") and text.count("<!-- study:ml-100k:smoke:begin -->") == 1
    assert "| `popularity` |" in text and text.rstrip().endswith("<!-- study:ml-100k:smoke:end -->")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--budget", "nope"], "error: unknown study budget 'nope' (known: "),
        (["--set", "arms=[random,nope]"], "unknown arm(s) nope (known: random, popularity"),
        (["--set", "bogus=1"], "error: unknown configuration key 'bogus'"),
        (["--seeds", "0"], "error: --seeds must be at least 1, got 0"),
        (["--dataset", "nope"], "error: unknown dataset 'nope'"),
    ],
)
def test_bad_input_is_one_clear_error(arguments, message, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["study", "--store", str(tmp_path / "store"), "--out", str(tmp_path), *arguments])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "store").exists()


def test_run_study_raises_the_same_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown study budget 'nope'"):
        study.run_study("nope", 1, str(tmp_path / "store"), tmp_path)
    with pytest.raises(ConfigError, match=r"unknown arm\(s\) nope"):
        study.run_study("smoke", 1, str(tmp_path / "store"), tmp_path, ["arms=[nope]"])
    with pytest.raises(InputError, match="--seeds must be at least 1"):
        study.run_study("smoke", 0, str(tmp_path / "store"), tmp_path)
    assert not (tmp_path / "store").exists()
