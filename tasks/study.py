"""The study's chain (``mdt4rec study`` and the ``study-mdt4rec`` flow): prepare each protocol's data and simulator
-> run every (protocol, arm, seed) cell -> summarise -> write ``study.json`` / ``study.md`` / ``r_cumu.png`` -> log
to MLflow. It is written once (``run_study``) over a table of steps: ``PLAIN_STEPS`` call the functions directly,
``TASK_STEPS`` are the same functions as Prefect tasks (the flow), so that each step is a task run.

A study lives in ``<out>/<dataset>-<budget>/``, one folder per cell (``<protocol>/<arm>/seed-<s>/``); a finished cell
is its ``cell.json`` and is never run again, so a rerun (or a resumed, interrupted study) only runs what is missing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mdt4rec_core.config import (
    DatasetConfig,
    RunConfig,
    TrackingConfig,
    TrajectoryConfig,
    flatten_keys,
    resolve_dataset,
)
from mdt4rec_core.errors import InputError
from mdt4rec_core.study import ARMS, CellInputs, StudyConfig, load_study_config, run_cell, summarise_cells
from tasks.json_output import json_ready
from tasks.prefect_task import as_task

PARAM_LIMIT = 6000  # MLflow's longest parameter value
PRIMARY_MODE = "FB"  # the mode of the Length / R_avg / distinct-items columns and the histogram, when studied
MARKER = "<!-- study:{dataset}:{budget}:{edge} -->"


# -- configuration and layout ------------------------------------------------------------------------------------------
def load_budget(budget: str, overrides: list[str] = (), dataset: str | None = None) -> StudyConfig:
    """``conf/studies/<budget>.yaml`` with ``key=value`` overrides; ``dataset`` (when given) replaces its dataset."""
    config = load_study_config(budget, list(overrides))
    return config.model_copy(update={"dataset": dataset}) if dataset else config


def study_dataset(config: StudyConfig) -> DatasetConfig:
    """The study's dataset, which must have a simulator (an InputError names the problem otherwise)."""
    dataset = resolve_dataset(config.dataset)
    if dataset.environment is None:
        raise InputError(f"dataset {dataset.name!r} has no simulator (no environment: in its configuration)")
    return dataset


def study_root(out: str | Path, dataset: str, budget: str) -> Path:
    return Path(out) / f"{dataset}-{budget}"


@dataclass(frozen=True)
class Cell:
    protocol: str
    arm: str
    seed: int
    folder: Path


def plan_cells(config: StudyConfig, seeds: int, root: Path) -> list[Cell]:
    """Every (protocol, arm, seed) of the study, protocol-major, in the budget's arm order."""
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    return [
        Cell(protocol, arm, seed, root / protocol / arm / f"seed-{seed}")
        for protocol in config.protocols
        for arm in config.arms
        for seed in range(seeds)
    ]


def check_study_folder(root: Path, config: StudyConfig) -> None:
    """Record the settings that make a cell's result (everything but the lists of arms and protocols) in
    ``root/settings.json`` on first use; a later study into the same folder with other settings would reuse cells
    it did not make, so it is an InputError naming what differs."""
    settings = config.model_dump(mode="json", exclude={"arms", "protocols"})
    path = root / "settings.json"
    if path.is_file():
        before = dict(flatten_keys(_with_current_defaults(json.loads(path.read_text(encoding="utf-8")), config)))
        after = dict(flatten_keys(settings))
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        if changed:
            raise InputError(
                f"{root} holds a study run with other settings ({', '.join(changed)} differ): its finished cells "
                "would be reused; choose another --out or remove that folder"
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    _write_text(path, json.dumps(settings, indent=1))


def _with_current_defaults(recorded: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """Recorded settings with the defaults of settings added since (no finished cell can depend on those); as they
    were recorded if they no longer parse."""
    try:
        parsed = StudyConfig.model_validate({**recorded, "arms": config.arms, "protocols": config.protocols})
    except ValidationError:
        return recorded
    return parsed.model_dump(mode="json", exclude={"arms", "protocols"})


def run_study_cell(inputs: CellInputs, config: StudyConfig, cell: Cell) -> dict[str, Any]:
    """``run_cell``, refusing to reuse a finished cell that was made from other data than ``inputs`` (the store's
    logs changed since): its numbers would not be comparable with the new cells'."""
    done = cell.folder / "cell.json"
    if done.is_file():
        record = json.loads(done.read_text(encoding="utf-8"))
        made_from = (record.get("trajectory_version"), record.get("environment_version"))
        now = (inputs.trajectories.stats.version, inputs.environment.info.version)
        if made_from != now:
            raise InputError(
                f"{done} was made from trajectory set / environment {'/'.join(map(str, made_from))}, the store now "
                f"gives {'/'.join(now)}: the data changed; choose another --out or remove that folder"
            )
    return run_cell(inputs, config, cell.arm, cell.seed, cell.folder)


def study_command(
    budget: str, seeds: int, store_uri: str, out: str | Path, overrides: list[str], dataset: str | None
) -> str:
    """The ``mdt4rec study`` command line that reproduces a study."""
    parts = ["mdt4rec", "study", *(["--dataset", dataset] if dataset else []), "--budget", budget]
    parts += ["--seeds", str(seeds), "--store", str(store_uri), "--out", str(out)]
    parts += [part for assignment in overrides for part in ("--set", assignment)]
    return shlex.join(parts)


# -- the steps ---------------------------------------------------------------------------------------------------------
def prepare_protocol(store_uri: str, dataset: DatasetConfig, protocol: str) -> CellInputs:
    """What every cell of ``protocol`` shares: the dataset ingested (the ingest chain runs when the store holds
    nothing for it), the protocol's quit-aware trajectory set (built or reused, the store's current set left as it
    is) and the protocol's simulator (built or reused)."""
    from mdt4rec_core.data.store import Store
    from mdt4rec_core.data.trajectories import load_trajectories
    from mdt4rec_core.envs.build import build_or_load
    from tasks.ingest import build_trajectories, run_ingest

    store = Store(store_uri)
    if store.scan_interactions(dataset.name) is None:
        run_ingest(RunConfig(dataset=dataset.name, store=store_uri), dataset)
    with store.writer_lock(dataset.name):
        build = build_trajectories(store.uri, dataset, TrajectoryConfig(protocol=protocol), make_current=False)
    if build.stats is None:
        raise InputError(f"dataset {dataset.name!r} has no stored interactions in {store.uri}")
    trajectories = load_trajectories(store, dataset.name, version=build.stats.version)
    if trajectories is None:  # pragma: no cover - the build above just wrote it
        raise InputError(f"trajectory set {build.stats.version} of {dataset.name!r} could not be read back")
    environment, _ = build_or_load(store, dataset, protocol)
    return CellInputs(store.uri, protocol, trajectories, environment)


def summarise_study(
    config: StudyConfig,
    budget: str,
    seeds: int,
    cells: list[dict[str, Any]],
    root: Path,
    command: str,
    seconds: float,
    reused: int = 0,
) -> dict[str, Any]:
    """Summarise the cells, write ``study.json``, ``study.md`` and ``r_cumu.png`` into ``root`` and return the
    study's summary (JSON-ready: NaN becomes None)."""
    rows = json_ready(summarise_cells(cells))
    meta = {
        "command": command,
        "dataset": config.dataset,
        "budget": budget,
        "seeds": seeds,
        "episodes": config.episodes,
        "protocols": list(config.protocols),
        "modes": list(config.modes),
        "arms": list(config.arms),
        "seconds": round(seconds, 1),
        "cell_seconds": round(sum(cell.get("seconds") or 0.0 for cell in cells), 1),
        "cells_run": len(cells) - reused,
        "cells_reused": reused,
        "finished": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
    }
    root.mkdir(parents=True, exist_ok=True)
    paths = {"folder": str(root), **{k: str(root / n) for k, n in _FILES.items()}}
    markdown = study_markdown(rows, meta)
    cell_view = [
        json_ready({k: cell.get(k) for k in _CELL_KEYS} | {"folder": str(_cell_folder(root, cell))}) for cell in cells
    ]
    summary = {
        **meta,
        "config": config.model_dump(mode="json"),
        "rows": rows,
        "cells": cell_view,
        "paths": paths,
    }
    _write_text(Path(paths["json"]), json.dumps(summary, indent=1, allow_nan=False))
    _write_text(Path(paths["markdown"]), markdown)
    figure = r_cumu_figure(rows)
    figure.savefig(paths["plot"], dpi=120)
    _close(figure)
    return summary


@dataclass(frozen=True)
class StudySteps:
    prepare_protocol: Callable[..., CellInputs]
    run_cell: Callable[..., dict[str, Any]]
    summarise: Callable[..., dict[str, Any]]


PLAIN_STEPS = StudySteps(prepare_protocol, run_study_cell, summarise_study)


def _cell_run_name() -> str:
    from prefect.runtime import task_run

    cell = task_run.parameters["cell"]
    return f"cell-{cell.protocol}-{cell.arm}-seed-{cell.seed}"


TASK_STEPS = StudySteps(
    as_task(prepare_protocol),
    as_task(run_study_cell, "run-cell", task_run_name=_cell_run_name),
    as_task(summarise_study, "summarise"),
)


def run_study(
    budget: str,
    seeds: int,
    store_uri: str,
    out: str | Path,
    overrides: list[str] = (),
    dataset: str | None = None,
    finished_only: bool = False,
    steps: StudySteps = PLAIN_STEPS,
) -> dict[str, Any]:
    """Run the study ``budget`` with ``seeds`` seeds, cell after cell (finished cells are reused), into
    ``<out>/<dataset>-<budget>/``; its summary (rows, paths, seconds; JSON-ready). Every cell runs even when one
    fails; then the failed ones are named (an InputError when each failed on bad input). ``finished_only`` runs
    nothing and summarises the cells that are finished (a study still running, or one whose arms ran with different
    seeds in separate processes)."""
    started = time.perf_counter()
    overrides = list(overrides)
    config = load_budget(budget, overrides, dataset)
    source = study_dataset(config)
    root = study_root(out, config.dataset, budget)
    cells = plan_cells(config, seeds, root)
    check_study_folder(root, config)
    records, reused = [], 0
    if finished_only:
        done = [c.folder / "cell.json" for c in cells if (c.folder / "cell.json").is_file()]
        records = [json.loads(path.read_text(encoding="utf-8")) for path in done]
        if not records:
            raise InputError(f"{root} holds no finished cell of this study")
        command = study_command(budget, seeds, store_uri, out, overrides, dataset) + " --finished-only"
        return steps.summarise(config, budget, seeds, records, root, command, 0.0, len(records))
    failed: list[tuple[Cell, Exception]] = []
    for protocol in config.protocols:
        inputs = steps.prepare_protocol(store_uri, source, protocol)
        for cell in (c for c in cells if c.protocol == protocol):
            reused += (cell.folder / "cell.json").is_file()
            try:
                records.append(steps.run_cell(inputs, config, cell))
            except Exception as error:  # the other cells still run
                failed.append((cell, error))
    if failed:
        _raise_failed(failed, len(cells))
    command = study_command(budget, seeds, store_uri, out, overrides, dataset)
    return steps.summarise(config, budget, seeds, records, root, command, time.perf_counter() - started, reused)


def _raise_failed(failed: list[tuple[Cell, Exception]], cells: int) -> None:
    names = ", ".join(f"{c.protocol}/{c.arm}/seed-{c.seed}" for c, _ in failed)
    message = f"{len(failed)} of {cells} cells failed ({names}): {failed[0][1]}"
    if all(isinstance(error, InputError) for _, error in failed):
        raise InputError(message) from None
    raise RuntimeError(message) from failed[0][1]


_FILES = {"json": "study.json", "markdown": "study.md", "plot": "r_cumu.png"}
_CELL_KEYS = ("protocol", "arm", "seed", "seconds", "train_seconds", "held_out_action_ce", "trajectory_version")


def _cell_folder(root: Path, cell: dict[str, Any]) -> Path:
    return root / cell["protocol"] / cell["arm"] / f"seed-{cell['seed']}"


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


# -- reporting ---------------------------------------------------------------------------------------------------------
def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _with_interval(value: float | None, interval: float | None, digits: int) -> str:
    text = _number(value, digits)
    return text if interval is None or not math.isfinite(interval) else f"{text} ± {interval:.{digits}f}"


def _r_cumu_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    text = _with_interval(row["R_cumu"], row["R_cumu_ci95"], 2)
    seed = row.get("R_cumu_seed_ci95")
    return text if seed is None or not math.isfinite(seed) else f"{text} (seeds ± {seed:.2f})"


def study_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The study as a markdown section: how it was run, then per protocol one row per arm (R_cumu in every mode with
    its 95 % interval over episodes and, with several seeds, over the per-seed means; Length, R_avg and distinct
    items in FB; held-out action cross-entropy), then the chosen-history-length histogram of each model arm."""
    modes = list(meta.get("modes") or dict.fromkeys(r["mode"] for r in rows))
    primary = PRIMARY_MODE if PRIMARY_MODE in modes or not modes else modes[0]
    protocols = list(meta.get("protocols") or dict.fromkeys(r["protocol"] for r in rows))
    lines = [
        f"### Study `{meta['budget']}` on `{meta['dataset']}`",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['seeds']} seed(s) x {meta['episodes']} episodes per arm and mode; wall time {meta['seconds']:.0f} s"
        + _cells_text(meta)
        + (f"; finished {meta['finished']}" if meta.get("finished") else "")
        + ". R_cumu: mean ± 95 % interval over episodes"
        + (", (seeds ± x): over the per-seed means" if meta["seeds"] > 1 else "")
        + f". Length, R_avg and distinct items in {primary}; CE: held-out action cross-entropy (nats).",
    ]
    by_key = {(r["protocol"], r["arm"], r["mode"]): r for r in rows}
    for protocol in protocols:
        arms = list(dict.fromkeys(r["arm"] for r in rows if r["protocol"] == protocol))
        header = ["arm", "seeds", *(f"R_cumu {m}" for m in modes), f"Length {primary}", f"R_avg {primary}"]
        header += [f"distinct items {primary}", "CE"]
        lines += ["", f"#### Protocol `{protocol}`", "", "| " + " | ".join(header) + " |"]
        lines.append("|---|" + "---:|" * (len(header) - 1))
        for arm in arms:
            main = by_key.get((protocol, arm, primary))
            seeds = str(main["seeds"]) if main is not None else "–"
            cells = [f"`{arm}`", seeds, *(_r_cumu_cell(by_key.get((protocol, arm, m))) for m in modes)]
            if main is None:
                cells += ["–"] * 4
            else:
                cells += [
                    _with_interval(main["Length"], main.get("Length_ci95"), 2),
                    _number(main["R_avg"], 2),
                    _number(main["distinct_items"], 1),
                    _number(main["held_out_action_ce"], 3),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        histograms = [
            (arm, by_key[(protocol, arm, primary)]["chosen_history_lengths"])
            for arm in arms
            if ARMS[arm].kind == "model" and (protocol, arm, primary) in by_key
        ]
        if histograms:
            lines += ["", f"Chosen history length w* ({primary}, share of decisions):", ""]
            for arm, histogram in histograms:
                lines.append(f"- `{arm}`: {_histogram_text(histogram)}")
    described = list(dict.fromkeys(r["arm"] for r in rows))
    lines += ["", "Arms: " + "; ".join(f"`{arm}` {ARMS[arm].description}" for arm in described) + "."]
    return "\n".join(lines) + "\n"


def _cells_text(meta: dict[str, Any]) -> str:
    """How much of the study this run computed: the cells' own seconds were spent when each cell first ran."""
    if "cell_seconds" not in meta:
        return ""
    cells = meta.get("cells_run", 0) + meta.get("cells_reused", 0)
    reused = meta.get("cells_reused", 0)
    return f" ({cells} cells, {reused} reused from earlier runs; {meta['cell_seconds']:.0f} s spent in the cells)"


def _histogram_text(histogram: dict[Any, int]) -> str:
    total = sum(histogram.values())
    if not total:
        return "no decisions recorded"
    parts = [f"{k}: {v / total:.0%}" for k, v in sorted(((int(k), v) for k, v in histogram.items()))]
    return ", ".join(parts) + f" ({total:,} decisions)"


def r_cumu_figure(rows: list[dict[str, Any]]):
    """R_cumu per arm with its 95 % interval over episodes, one panel per (protocol, mode)."""
    from tasks.reporting import plt  # the Agg backend is chosen there

    protocols = list(dict.fromkeys(r["protocol"] for r in rows)) or ["-"]
    modes = list(dict.fromkeys(r["mode"] for r in rows)) or ["-"]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    height = 1.0 + 0.28 * max(len(arms), 4)
    figure, axes = plt.subplots(
        len(protocols), len(modes), figsize=(4.2 * len(modes), height * len(protocols)), squeeze=False, sharey=True
    )
    by_key = {(r["protocol"], r["arm"], r["mode"]): r for r in rows}
    for i, protocol in enumerate(protocols):
        for j, mode in enumerate(modes):
            axis = axes[i][j]
            found = [by_key.get((protocol, arm, mode)) for arm in arms]
            values = [r["R_cumu"] if r and r["R_cumu"] is not None else math.nan for r in found]
            errors = [r["R_cumu_ci95"] if r and r["R_cumu_ci95"] is not None else 0.0 for r in found]
            colours = ["tab:blue" if ARMS[a].kind == "model" else "tab:gray" for a in arms]
            axis.barh(range(len(arms)), values, xerr=errors, capsize=3, color=colours)
            axis.set(title=f"{protocol} / {mode}", xlabel="R_cumu (95 % interval)")
    axes[0][0].set_yticks(range(len(arms)), arms)
    axes[0][0].invert_yaxis()  # the y axis is shared: inverted once, the first arm on top everywhere
    figure.tight_layout()
    return figure


def _close(figure) -> None:
    from tasks.reporting import plt

    plt.close(figure)


def replace_section(path: Path, dataset: str, budget: str, markdown: str) -> None:
    """Put ``markdown`` between the markers ``<!-- study:<dataset>:<budget>:begin/end -->`` of ``path`` (replacing
    what was there; appended, markers included, when the file or the markers are missing)."""
    begin = MARKER.format(dataset=dataset, budget=budget, edge="begin")
    end = MARKER.format(dataset=dataset, budget=budget, edge="end")
    section = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, text)


# -- MLflow ------------------------------------------------------------------------------------------------------------
def study_experiment(client, dataset: str, config: TrackingConfig) -> str:
    """The experiment ``mdt4rec-study-<dataset>``."""
    from tasks.tracking import named_experiment

    return named_experiment(client, f"mdt4rec-study-{dataset}", config)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= PARAM_LIMIT else text[: PARAM_LIMIT - 15] + "...[truncated]"


def _params(pairs: list[tuple[str, Any]]) -> list:
    from mlflow.entities import Param

    return [Param(key[:250], _param_value(value)) for key, value in pairs]


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def _metric(name: str, value: Any, now: int) -> list:
    from mlflow.entities import Metric

    if value is None or not math.isfinite(float(value)):
        return []
    return [Metric(name, float(value), now, 0)]


def _log_batches(client, run_id: str, params: list, metrics: list) -> None:
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_study(tracking: TrackingConfig, result: dict[str, Any], client=None) -> dict[str, Any]:
    """One parent run ``study-<budget>`` in ``mdt4rec-study-<dataset>`` (tags budget, dataset, seeds, git commit;
    the flattened budget as params; study.json, study.md and r_cumu.png as artifacts) and one child run per
    (protocol, arm) with the arm's settings as params and its figures per mode as metrics. Returns the run ids."""
    from tasks.tracking import connect, tracking_uri

    client = client or connect(tracking)
    experiment = study_experiment(client, result["dataset"], tracking)
    config = result["config"]
    tags = {"budget": result["budget"], "dataset": result["dataset"], "seeds": str(result["seeds"])}
    commit = _git_commit()
    if commit:
        tags["git_commit"] = commit
    parent = client.create_run(experiment, run_name=f"study-{result['budget']}", tags=tags).info.run_id
    children: dict[str, str] = {}
    try:
        study_params = [(k, v) for k, v in flatten_keys(config) if k != "arms"]
        parent_params = [*flatten_keys(config), ("seeds", result["seeds"]), ("command", result["command"])]
        now = int(time.time() * 1000)
        totals = [("wall_seconds", "seconds"), ("cell_seconds", "cell_seconds"), ("cells_run", "cells_run")]
        metrics = [m for name, key in totals for m in _metric(name, result.get(key), now)]
        _log_batches(client, parent, _params(parent_params), metrics)
        for protocol in result["protocols"]:
            for arm in result["arms"]:
                rows = [r for r in result["rows"] if r["protocol"] == protocol and r["arm"] == arm]
                if not rows:
                    continue
                children[f"{protocol}/{arm}"] = _log_arm(
                    client, experiment, parent, tags, protocol, arm, rows, result, study_params, now
                )
        for key in ("json", "markdown", "plot"):
            client.log_artifact(parent, result["paths"][key])
    except BaseException:
        for run_id in (*children.values(), parent):
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return {
        "experiment": f"mdt4rec-study-{result['dataset']}",
        "parent_run_id": parent,
        "child_run_ids": children,
        "tracking_uri": tracking_uri(tracking),
    }


def _log_arm(client, experiment, parent, tags, protocol, arm, rows, result, study_params, now) -> str:
    spec = ARMS[arm]
    child_tags = {**tags, "mlflow.parentRunId": parent, "protocol": protocol, "arm": arm}
    run_id = client.create_run(experiment, run_name=f"{protocol}/{arm}", tags=child_tags).info.run_id
    pairs: list[tuple[str, Any]] = [
        ("arm", arm),
        ("kind", spec.kind),
        ("description", spec.description),
        ("protocol", protocol),
        *((f"arm.model.{k}", v) for k, v in flatten_keys(spec.model)),
        *((f"arm.search.{k}", v) for k, v in flatten_keys(spec.search)),
        *((f"study.{k}", v) for k, v in study_params),
        ("study.seeds", result["seeds"]),
    ]
    metrics = []
    for row in rows:
        mode = row["mode"]
        for name in ("R_cumu", "R_cumu_ci95", "R_cumu_seed_ci95", "Length", "R_avg", "distinct_items"):
            metrics += _metric(f"{name}_{mode}", row.get(name), now)
    metrics += _metric("held_out_action_ce", rows[0].get("held_out_action_ce"), now)
    cells = [c for c in result.get("cells", []) if c["protocol"] == protocol and c["arm"] == arm]
    train = [c["train_seconds"] for c in cells if c.get("train_seconds") is not None]
    if train:
        metrics += _metric("train_seconds", sum(train) / len(train), now)
    _log_batches(client, run_id, _params(pairs), metrics)
    client.set_terminated(run_id, "FINISHED")
    return run_id
