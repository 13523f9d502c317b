"""The command-line contract: the last line of --json output (strict JSON), exit codes, one error line for a server
that does not answer or a registry that is not there, quiet plain-text output, and the installed MovieLens-1M."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from mdt4rec_core.data.catalogue import held_out
from mdt4rec_core.data.store import Store

CONTRACT_KEYS = {
    "rows_read",
    "rows_accepted",
    "rows_quarantined",
    "files_ingested",
    "files_skipped",
    "users",
    "items",
    "episodes",
    "steps",
    "seconds",
}


def mdt4rec(*args, timeout=300, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mdt4rec_cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def without_servers(**extra) -> dict[str, str]:
    """This environment with no Prefect API and no tracking URI (the README run), plus ``extra``."""
    unset = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, **extra}


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def last_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_generic_csv_contract(tmp_path):
    log = tmp_path / "events.csv"
    log.write_text(
        "user_id,item_id,timestamp,feedback\nu1,i1,2024-03-01T10:00:00Z,1\nu1,i2,1709287260,0\n"
        "u2,i1,2024-03-01T10:05:00+01:00,1\nu2,i3,soon,1\n"
    )
    summary = last_json(
        mdt4rec(
            "ingest",
            "--source",
            str(log),
            "--format",
            "csv",
            "--dataset",
            "shop",
            "--store",
            str(tmp_path / "store"),
            "--json",
        )
    )
    assert CONTRACT_KEYS <= summary.keys()
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_quarantined"]) == (4, 3, 1)
    assert (summary["files_ingested"], summary["files_skipped"], summary["users"], summary["items"]) == (1, 0, 2, 2)
    again = last_json(
        mdt4rec(
            "ingest",
            "--source",
            str(log),
            "--format",
            "csv",
            "--dataset",
            "shop",
            "--store",
            str(tmp_path / "store"),
            "--json",
        )
    )
    assert (again["files_ingested"], again["files_skipped"], again["rows_read"]) == (0, 1, 0)


def test_unknown_format_and_dataset_are_one_line_errors(tmp_path):
    result = mdt4rec(
        "ingest", "--source", str(tmp_path), "--format", "xlsx", "--dataset", "x", "--store", str(tmp_path)
    )
    assert result.returncode == 2 and "error: unknown format 'xlsx'" in result.stderr
    result = mdt4rec("ingest", "--dataset", "nope", "--store", str(tmp_path))
    assert result.returncode == 2 and "error: unknown dataset 'nope'" in result.stderr
    result = mdt4rec("ingest", "--dataset", "ml-1m", "--store", str(tmp_path), "--set", "trajectories.state_length=x")
    assert result.returncode == 2 and "trajectories.state_length" in result.stderr


def test_movielens_1m_from_the_installed_package(tmp_path):
    """The whole of MovieLens-1M in, cut by session (the quit-rule cut needs the simulator built first, about a
    minute on ML-1M; tests/test_env_datasets.py and tests/test_learning.py test it on MovieLens-100K)."""
    store = tmp_path / "store"
    args = ("--dataset", "ml-1m", "--store", str(store), "--set", "trajectories.cut_by=session", "--json")
    summary = last_json(mdt4rec("ingest", *args))
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_quarantined"]) == (1_000_209, 1_000_209, 0)
    # The trajectory set leaves out the users the strict protocol holds out (conf/pipeline.yaml, as every profile).
    trained_on = Store(store).scan_interactions("ml-1m").filter(~held_out(pl.col("user_id"))).collect()
    assert summary["users"] == trained_on["user_id"].n_unique() < 6040
    assert (summary["items"], summary["steps"]) == (3706, trained_on.height)
    assert summary["episodes"] >= trained_on.height // 30
    items = pl.read_parquet(Store(store).url("items/dataset=ml-1m/items.parquet"))
    assert items.height == 3883 and "Toy Story (1995) | Animation Children's Comedy" in items["text"].to_list()

    validated = last_json(mdt4rec("validate", "--dataset", "ml-1m", "--store", str(store), "--json"))
    assert validated["success"] and [s["suite"] for s in validated["suites"]] == ["interactions", "trajectories"]


def test_validate_exits_1_on_a_corrupted_store(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,feedback\nu1,i1,1700000000,1\nu1,i2,1700000060,2\n")
    store = tmp_path / "store"
    last_json(
        mdt4rec("ingest", "--source", str(log), "--format", "csv", "--dataset", "d", "--store", str(store), "--json")
    )
    # Something outside the pipeline copies a part: every event is now stored twice.
    part = next((store / "interactions").rglob("*.parquet"))
    part.with_name(part.stem + "-copy.parquet").write_bytes(part.read_bytes())
    result = mdt4rec("validate", "--dataset", "d", "--store", str(store), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout.strip().splitlines()[-1])
    failed = report["suites"][0]["failed"]
    assert [f["expectation"] for f in failed] == ["expect_compound_columns_to_be_unique"]


def test_ingest_takes_in_the_landing_folder_and_trains_on_the_strict_protocols_users(tmp_path):
    """`mdt4rec ingest` ingests what the pipeline ingests (the dataset's files, then <landing>/<dataset>/) and builds
    the set every profile trains on: the users the strict protocol holds out stay out of it."""
    header = "user_id,item_id,timestamp,feedback\n"
    rows = [f"user{u},i{(u + k) % 7},{1_700_000_000 + 60 * k},1\n" for u in range(60) for k in range(2)]
    for folder, name, part in (("logs", "log.csv", rows[:60]), ("landing/shop", "new.csv", rows[60:])):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_text(header + "".join(part))
    store = tmp_path / "store"
    args = ("ingest", "--source", "logs", "--format", "csv", "--dataset", "shop", "--store", str(store), "--json")
    summary = last_json(mdt4rec(*args, cwd=tmp_path))
    assert (summary["files_ingested"], summary["rows_accepted"]) == (2, 120)
    steps = pl.read_parquet(next((store / "trajectories").rglob("steps/*.parquet")))
    held = pl.Series([f"user{u}" for u in range(60)]).to_frame("user_id").filter(held_out(pl.col("user_id")))
    assert held.height > 0 and not set(held["user_id"]) & set(steps["user_id"])
    assert summary["users"] == 60 - held.height


def test_an_unreachable_prefect_api_is_one_error_line(tmp_path):
    url = f"http://127.0.0.1:{unused_port()}/api"
    result = mdt4rec(
        "pipeline", "--profile", "smoke", "-d", "ml-100k", cwd=tmp_path, env=without_servers(PREFECT_API_URL=url)
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: the Prefect API at {url} (PREFECT_API_URL) cannot be reached (Connection refused): start it "
        "(prefect server start) or point PREFECT_API_URL at a running one"
    ]
    assert not (tmp_path / "store").exists()  # refused before any work


@pytest.mark.parametrize("command", [("promote", "1"), ("rollback",)])
def test_promote_and_rollback_refuse_without_a_registry_and_create_none(tmp_path, command):
    result = mdt4rec(*command, cwd=tmp_path, env=without_servers())
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: no model registry: {tmp_path / 'mlflow.db'} does not exist; run from the folder that holds the "
        "pipeline's mlflow.db or set MLFLOW_TRACKING_URI"
    ]
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_tracking_server_is_one_error_line_for_promote(tmp_path):
    uri = f"http://127.0.0.1:{unused_port()}"
    result = mdt4rec("promote", "2", cwd=tmp_path, env=without_servers(MLFLOW_TRACKING_URI=uri))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(
        f"error: MLflow at {uri} cannot be reached"
    )


def test_the_mlflow_hint_names_the_mlflow_next_to_the_running_python(monkeypatch, tmp_path):
    from mdt4rec_cli.main import mlflow_command

    bin_dir = Path(os.path.abspath(Path(sys.executable).parent))
    assert (bin_dir / "mlflow").is_file()  # the test environment has the mlflow script
    monkeypatch.chdir(bin_dir.parent.parent)  # the project folder, for the project's .venv
    assert mlflow_command() == os.path.join(bin_dir.parent.name, bin_dir.name, "mlflow")  # .venv/bin/mlflow
    monkeypatch.chdir(tmp_path)  # elsewhere
    assert mlflow_command() == str(bin_dir / "mlflow")


def test_loading_a_pretrained_backbone_prints_no_load_report_and_no_progress_bar(tmp_path):
    """transformers reports every key a checkpoint lacks (here the language-model head, as a base model is saved) in a
    coloured table, and draws a bar per load; off a terminal neither reaches the output."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=64, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0
    )
    GPT2Model(config).save_pretrained(tmp_path / "base")
    load = (
        "from mdt4rec_core.config import BackboneConfig; from mdt4rec_core.model.backbone import load_causal_lm; "
        f"model, family = load_causal_lm(BackboneConfig(kind='gpt2', path={str(tmp_path / 'base')!r}), 16); "
        "print(family, model.lm_head.weight.shape[0])"
    )
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gpt2", "64"]
    assert "LOAD REPORT" not in result.stderr and "newly initialized" not in result.stderr
    assert "Loading weights" not in result.stderr and "\r" not in result.stderr


SMOKE = ["--set", "train.max_steps=2", "--set", "evaluation.episodes=3", "--set", "evaluation.seeds=1"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, str]:
    """`mdt4rec pipeline --profile smoke` as `make run > log 2>&1` sees it: stdout and stderr into one file, no
    terminal, no servers. Returns the working folder and the whole output."""
    work = tmp_path_factory.mktemp("smoke")
    result = subprocess.run(
        [sys.executable, "-m", "mdt4rec_cli", "pipeline", "--profile", "smoke", "-d", "ml-100k", *SMOKE],
        cwd=work,
        env=without_servers(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return work, result.stdout


def test_pipeline_output_is_plain_quiet_and_ends_with_the_summary_table(smoke_run):
    work, output = smoke_run
    assert "\x1b" not in output  # no ANSI escape codes in a log
    assert "\r" not in output and "━" not in output  # no progress bars off a terminal
    assert "LOAD REPORT" not in output and "newly initialized" not in output
    assert not re.search(r"py\.warnings|\w+Warning: ", output), "a Python warning reached the output"
    lines = output.rstrip("\n").splitlines()
    header = lines.index("| policy | mode | protocol | R_cumu | 95 % | Length | R_avg |")
    assert lines[header + 1].startswith("|---") and len(lines) - header - 2 == 6  # 3 modes x 2 protocols, last
    assert all(line.startswith("| model |") for line in lines[header + 2 :])
    mlflow = Path(os.path.abspath(Path(sys.executable).parent)) / "mlflow"
    assert f"open the MLflow UI: {mlflow} ui --backend-store-uri sqlite:///{work / 'mlflow.db'}" in output


def test_json_output_is_strict_json_with_null_for_what_is_not_a_number(smoke_run):
    work, _ = smoke_run
    result = mdt4rec(
        "evaluate", "--env", "ml-100k", "--episodes", "3", "--seeds", "1", "--store", str(work / "store"), "--json"
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    summary = json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert summary["R_cumu_seed_ci95"] is None  # an interval over one seed is not a number
    assert isinstance(summary["R_cumu"], float)


HEAVY = ("torch", "prefect", "mlflow", "transformers", "great_expectations")
MODULES_AFTER = """
import json, runpy, sys
sys.argv = ["mdt4rec", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("mdt4rec_cli", run_name="__main__")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def test_help_and_ingest_start_without_torch_prefect_mlflow_or_transformers(tmp_path):
    """What `mdt4rec --help` and a plain `mdt4rec ingest` load: none of the heavy libraries (start-up time)."""
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,feedback\nu1,i1,1700000000,1\nu1,i2,1700000060,2\nu2,i1,1700000000,3\n")
    ingest = ["ingest", "--source", str(log), "--format", "csv", "--dataset", "d", "--store", str(tmp_path / "s")]
    for command in (["--help"], ingest):
        result = subprocess.run(
            [sys.executable, "-c", MODULES_AFTER, *command], capture_output=True, text=True, timeout=300
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        validates = {"great_expectations"} if command == ingest else set()  # ingest validates what it stores
        assert report["code"] == 0 and set(report["loaded"]) <= validates, (command, report, result.stderr[-2000:])


def test_bad_settings_fail_in_one_line_before_any_heavy_library_loads(tmp_path):
    """A mistyped --set is reported before the flow, GX, torch or MLflow is imported (about a second, not ten)."""
    bogus, store = ["--set", "train.bogus=1"], ["--store", str(tmp_path / "s")]
    pipeline = ["pipeline", "--profile", "smoke", "-d", "ml-100k", *bogus]
    for command in (pipeline, ["train", *store, *bogus], ["ingest", *store, *bogus], ["validate", *store, *bogus]):
        result = subprocess.run(
            [sys.executable, "-c", MODULES_AFTER, *command],
            capture_output=True,
            text=True,
            timeout=300,
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report == {"code": 2, "loaded": []}, (command, report, result.stderr[-2000:])
        assert result.stderr.strip().splitlines() == [
            "error: unknown configuration key 'train.bogus' in override 'train.bogus=1'"
        ], result.stderr
