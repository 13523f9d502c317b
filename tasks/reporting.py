"""What a training run reports: plots for MLflow, the evaluation table and a markdown summary for Prefect."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

EVALUATION_COLUMNS = ("mode", "protocol", "R_cumu", "R_cumu_ci95", "Length", "R_avg", "episodes", "seeds")
DECIMALS = 3  # decimals of the figures in the Prefect artifacts


def learning_curve(history: dict[str, list[list[float]]]) -> Figure:
    """Training loss per step and validation loss where it was measured."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "train"), ("validation_loss", "validation")):
        points = history.get(key) or []
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="o" if key == "validation_loss" else None, label=label)
    axis.set(xlabel="step", ylabel="loss", title="Learning curve")
    axis.legend()
    figure.tight_layout()
    return figure


def returns_by_mode(evaluations: list[dict[str, Any]]) -> Figure:
    """R_cumu per mode, one bar per protocol, with 95 % intervals over episodes."""
    modes = list(dict.fromkeys(e["mode"] for e in evaluations))
    protocols = list(dict.fromkeys(e["protocol"] for e in evaluations))
    width = 0.8 / len(protocols)
    figure, axis = plt.subplots(figsize=(6, 4))
    for offset, protocol in enumerate(protocols):
        rows = {e["mode"]: e for e in evaluations if e["protocol"] == protocol}
        xs = [i + offset * width for i, mode in enumerate(modes) if mode in rows]
        axis.bar(
            xs,
            [rows[m]["R_cumu"] for m in modes if m in rows],
            width,
            yerr=[rows[m]["R_cumu_ci95"] for m in modes if m in rows],
            capsize=4,
            label=protocol,
        )
    axis.set_xticks([i + width * (len(protocols) - 1) / 2 for i in range(len(modes))], modes)
    axis.set(ylabel="R_cumu", title="Cumulative reward by mode (95 % interval)")
    axis.legend(title="protocol")
    figure.tight_layout()
    return figure


def history_lengths(evaluations: list[dict[str, Any]]) -> Figure:
    """How often the search chose each history length, over every evaluated decision."""
    counts: dict[int, int] = {}
    for evaluation in evaluations:
        for length, count in (evaluation.get("chosen_history_lengths") or {}).items():
            counts[int(length)] = counts.get(int(length), 0) + int(count)
    figure, axis = plt.subplots(figsize=(6, 4))
    lengths = sorted(counts)
    axis.bar(lengths, [counts[n] for n in lengths])
    axis.set(xlabel="chosen history length w*", ylabel="decisions", title="Chosen history lengths")
    figure.tight_layout()
    return figure


def baseline_rows(baselines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON-ready row per gate baseline evaluation."""
    return [{"policy": b["policy"], **{column: b[column] for column in EVALUATION_COLUMNS}} for b in baselines]


def evaluation_rows(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON-ready row per (mode, protocol) evaluation."""
    return [{column: e[column] for column in EVALUATION_COLUMNS} for e in evaluations]


def metrics_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's evaluations (policy ``model``) and then the gate's baselines, figures rounded to DECIMALS."""
    rows = [{"policy": "model", **row} for row in summary["evaluation"]] + summary.get("baselines", [])
    return [{k: round(v, DECIMALS) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def summary_markdown(summary: dict[str, Any]) -> str:
    """The run at a glance: data, training, evaluation and registration."""
    lines = [f"# train-mdt4rec on `{summary['dataset']}` (profile `{summary['profile']}`)", ""]
    ingest = summary["ingest"]
    lines.append(
        f"- Data: {ingest['files_ingested']} new file(s), {ingest['rows_accepted']:,} rows accepted, "
        f"{ingest['rows_quarantined']:,} quarantined; trajectory set `{ingest['trajectory_version']}`"
    )
    if summary.get("skipped"):
        lines.append(f"- Training skipped: {summary['skipped']}")
        return "\n".join(lines) + "\n"
    training = summary["training"]
    reused = f"reused `{training['checkpoint']}` (same inputs, not registered yet): " if training.get("reused") else ""
    lines.append(
        f"- Training: {reused}{training['steps']} steps, loss {training['train_loss_first']:.3f} -> "
        f"{training['train_loss_last']:.3f}, {training['seconds']:.0f} s"
    )
    registration = summary["registration"]
    role = "champion" if registration["promoted"] else "challenger"
    lines.append(
        f"- Registered `{summary['model_name']}` version {registration['version']} as {role}: {registration['reason']}"
    )
    run = summary["mlflow_run_id"]
    url = summary.get("mlflow_run_url")
    lines.append(f"- MLflow run [`{run}`]({url})" if url else f"- MLflow run `{run}` at {summary['tracking_uri']}")
    lines += [
        "",
        "| policy | mode | protocol | R_cumu | 95 % | Length | R_avg |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in metrics_table(summary):
        lines.append(
            f"| {row['policy']} | {row['mode']} | {row['protocol']} | {row['R_cumu']:.3f} | {row['R_cumu_ci95']:.3f} | "
            f"{row['Length']:.3f} | {row['R_avg']:.3f} |"
        )
    return "\n".join(lines) + "\n"
