"""``mdt4rec``: the pipeline's operations by hand. Heavy libraries are imported inside the commands so that
``mdt4rec --help`` stays fast. Every command that produces figures prints them as one JSON object on its last line
with ``--json`` (strict JSON: a value that is not a finite number is ``null``). Bad input exits with status 2 and a
one-line ``error:`` message naming the cause. Output is plain text, without progress bars, when stderr is not a
terminal."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0] if __doc__ else None)
console = Console(stderr=True)

DatasetOption = typer.Option(
    "ml-1m", "--dataset", "-d", help="Dataset name (conf/datasets/<name>.yaml, or any name with --source and --format)."
)
StoreOption = typer.Option(
    None, "--store", help="Store root: a local folder or a pyarrow URI (default: conf/pipeline.yaml)."
)
SetOption = typer.Option(
    None,
    "--set",
    help="Override a run configuration key (the same keys for every command): --set trajectories.state_length=20, "
    "--set train.max_steps=50, --set model.backbone.lora_r=8, --set search.kappa=5, --set evaluation.episodes=20",
)
JsonOption = typer.Option(False, "--json", help="Print the figures as one JSON object on the last line.")
DeviceOption = typer.Option(
    None,
    "--device",
    help="Where the model runs: auto (CUDA when present), cpu, cuda or cuda:N (default: its settings).",
)


def _run(
    command: Callable[[], dict[str, Any]], as_json: bool, render: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Run ``command``; bad input becomes one ``error:`` line and exit status 2."""
    from mdt4rec_core.errors import InputError

    try:
        result = command()
    except InputError as exc:
        lines = str(exc).splitlines() or ["invalid input"]
        for line in lines[1:]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        print(f"error: {lines[0]}", file=sys.stderr)
        raise typer.Exit(2) from None
    render(result)
    if as_json:
        from tasks.json_output import json_ready

        # One write with its newline: processes sharing the stream (torchrun's ranks) cannot split each other's line.
        sys.stdout.write(json.dumps(json_ready(result), default=str, allow_nan=False) + "\n")
        sys.stdout.flush()
    return result


def _render_ingest(summary: dict[str, Any]) -> None:
    console.print(
        f"[bold]{summary['dataset']}[/]: read {summary['rows_read']:,} rows from {summary['files_ingested']} new files "
        f"({summary['files_skipped']} already ingested): {summary['rows_accepted']:,} accepted, "
        f"{summary['rows_quarantined']:,} quarantined"
    )
    for reason, count in summary.get("quarantine_reasons", {}).items():
        console.print(f"  quarantined for {reason}: {count:,}")
    for path, error in summary.get("file_errors", {}).items():
        console.print(f"  [yellow]{path}[/]: {error}", markup=True)
    if summary["trajectory_version"] is None:
        console.print("[yellow]nothing stored yet: no trajectories built[/]")
        return
    state = "built" if summary["trajectories_built"] else "unchanged, reused"
    console.print(
        f"trajectories {summary['trajectory_version']} ({state}): {summary['users']:,} users, "
        f"{summary['items']:,} items, {summary['episodes']:,} episodes, {summary['steps']:,} steps; "
        f"store {summary['store']}; {summary['seconds']} s"
    )


@app.command()
def ingest(
    dataset: str = DatasetOption,
    source: str | None = typer.Option(
        None, "--source", help="A raw file or folder (instead of the dataset's configured location)."
    ),
    format: str | None = typer.Option(
        None,
        "--format",
        help="Raw format: csv, tsv, ndjson, parquet, recbole, movielens-dat, movielens-udata, coat, yahoo-r3, "
        "kuairec, kuairand-pure.",
    ),
    store: str | None = StoreOption,
    overrides: list[str] | None = SetOption,
    as_json: bool = JsonOption,
) -> None:
    """Ingest new raw logs (the dataset's files, then those dropped in <landing>/<dataset>/, as the pipeline does) into
    the store and build the trajectory set (the ingest-logs chain, without Prefect)."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config

        config = load_run_config(dataset=dataset, overrides=list(overrides or []), store=store)
        from tasks.ingest import dataset_to_ingest, run_ingest  # bad settings fail before GX is imported

        return run_ingest(config, dataset_to_ingest(config, source, _format(format)))

    _run(command, as_json, _render_ingest)


@app.command()
def validate(
    dataset: str = DatasetOption,
    store: str | None = StoreOption,
    overrides: list[str] | None = SetOption,
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Move damaged files aside into <store>/damaged/ (with the parts and manifest entries of their source "
        "file, so that the next ingest reads it again), then validate what is left.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Validate everything stored for a dataset (interactions and the current trajectory set) with the GX suites.
    Every stored file is read in full first: damaged files are listed, one line each, with exit status 2."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config

        config = load_run_config(dataset=dataset, overrides=list(overrides or []), store=store)
        from tasks.validation import validate_stored

        return validate_stored(config, repair)

    def render(result: dict[str, Any]) -> None:
        for path in result["repaired"]:
            console.print(f"moved aside: {path}", markup=False, highlight=False, soft_wrap=True)
        for path in result["ignored"]:
            console.print(f"ignored (not a manifest entry): {path}", markup=False, highlight=False, soft_wrap=True)
        for suite in result["suites"]:
            colour = "green" if suite["success"] else "red"
            console.print(
                f"[{colour}]{suite['suite']}[/]: {'passed' if suite['success'] else 'FAILED'} "
                f"on {suite['rows']:,} rows; Data Docs {suite['data_docs']}"
            )
            for failure in suite["failed"]:
                console.print(
                    f"  {failure['expectation']}({failure['columns']}): "
                    f"{failure['unexpected_count']:,} unexpected, e.g. {failure['examples'][:3]}",
                    markup=False,
                )

    if not _run(command, as_json, render)["success"]:
        raise typer.Exit(1)  # a failed suite is a finding about the stored data, not bad input to the command


ProfileOption = typer.Option("cpu", "--profile", help="conf/profiles/<profile>.yaml: smoke, cpu or paper.")


@app.command()
def pipeline(
    dataset: str = DatasetOption,
    profile: str = ProfileOption,
    overrides: list[str] | None = SetOption,
    force: bool = typer.Option(False, "--force", help="Train even when no new data arrived."),
    as_json: bool = JsonOption,
) -> None:
    """Run the train-mdt4rec flow in-process: ingest, validate, train, evaluate, register (Prefect's ephemeral API
    unless PREFECT_API_URL is set; MLflow on ./mlflow.db unless MLFLOW_TRACKING_URI is set)."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config

        load_run_config(profile, dataset, list(overrides or []))  # bad input fails here, before any heavy import
        check_prefect_api()
        from flows.train_mdt4rec import train_mdt4rec

        _hide_temporary_server_stop()
        return train_mdt4rec(profile=profile, dataset=dataset, overrides=list(overrides or []), force=force)

    def render(r: dict[str, Any]) -> None:
        from tasks.reporting import summary_markdown

        uri = r.get("tracking_uri")
        if uri:
            console.print(f"checkpoint: {r['training']['checkpoint']}", markup=False, soft_wrap=True)
            ui = f"{mlflow_command()} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
            console.print(f"open the MLflow UI: {ui}  (then http://127.0.0.1:5000)", markup=False, soft_wrap=True)
        console.print(summary_markdown(r).rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

    _run(command, as_json, render)


def check_prefect_api() -> None:
    """With a Prefect API configured (PREFECT_API_URL), an InputError naming it unless it answers its health check;
    without one, flows run on a temporary local API."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    from mdt4rec_core.errors import InputError

    url = get_current_settings().api.url
    if not url:
        return
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        reason = re.sub(r"^\[Errno -?\d+\] ", "", str(failure)) or type(failure).__name__
        raise InputError(
            f"the Prefect API at {url} (PREFECT_API_URL) cannot be reached ({reason}): start it "
            "(prefect server start) or point PREFECT_API_URL at a running one"
        )


def _hide_temporary_server_stop() -> None:
    """Drop the line Prefect logs when it stops its temporary local API at exit, after the run's summary."""
    logging.getLogger("prefect").addFilter(
        lambda record: not record.getMessage().startswith("Stopping temporary server")
    )


def mlflow_command() -> str:
    """The mlflow of the environment this command runs in: ``.venv/bin/mlflow`` (relative to the working folder when
    it lies below it, else absolute), or ``<python> -m mlflow`` when that environment has no mlflow script."""
    script = Path(os.path.abspath(Path(sys.executable).parent / "mlflow"))
    if not script.is_file():
        return f"{sys.executable} -m mlflow"
    return str(script.relative_to(Path.cwd())) if script.is_relative_to(Path.cwd()) else str(script)


@app.command()
def deploy(
    dataset: str = DatasetOption,
    profile: str = ProfileOption,
    cron: str | None = typer.Option(None, "--cron", help="Schedule (default: deployment.cron in conf/pipeline.yaml)."),
    timezone: str | None = typer.Option(None, "--timezone", help="Timezone of the schedule (default: UTC)."),
) -> None:
    """Serve the dataset's deployment of train-mdt4rec from this process (needs PREFECT_API_URL):
    train-mdt4rec/nightly for ml-1m, train-mdt4rec/nightly-<dataset> for any other. Stopping it (SIGTERM) stops its
    runs and leaves the schedule active; runs wait for the next serving process or a worker. Its runs send
    heartbeats, and the deployment's automations that end runs whose process died are created or updated on the
    server."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config
        from mdt4rec_core.errors import InputError

        settings = load_run_config(profile, dataset).deployment
        if not os.environ.get("PREFECT_API_URL"):
            raise InputError("PREFECT_API_URL is not set: start `prefect server start` and point at its /api")
        check_prefect_api()
        from prefect import serve
        from prefect.schedules import Cron

        from flows.train_mdt4rec import train_mdt4rec
        from tasks.deployment import install_automations, process_loss_automations, send_heartbeats

        deployment = train_mdt4rec.to_deployment(
            name=settings.name_for(dataset),
            schedules=[Cron(cron or settings.cron, timezone=timezone or settings.timezone)],
            parameters={"profile": profile, "dataset": dataset},
            concurrency_limit=1,
        )
        name = f"{train_mdt4rec.name}/{deployment.name}"
        send_heartbeats(settings)
        install_automations(process_loss_automations(name, deployment.apply(), settings))
        serve(deployment, pause_on_shutdown=False)
        return {"deployment": name, "stopped": True}

    _run(command, False, lambda r: console.print(f"{r['deployment']}: serving process stopped"))


@app.command()
def promote(
    version: int = typer.Argument(..., help="The registered version to make champion."),
    as_json: bool = JsonOption,
) -> None:
    """Point the alias `champion` of the registered model at VERSION (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    _alias_command(lambda client, name: _tracking().promote(client, name, version), as_json)


@app.command()
def rollback(as_json: bool = JsonOption) -> None:
    """Move the alias `champion` back to the version it pointed at before its last move."""
    _alias_command(lambda client, name: _tracking().rollback(client, name), as_json)


def _tracking():
    from tasks import tracking

    return tracking


def _alias_command(move, as_json: bool) -> None:
    """Run ``move`` on the registry: refused when there is none, one error line when its server does not answer."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config

        settings = load_run_config().tracking
        tracking = _tracking()
        check_registry_exists(tracking.tracking_uri(settings))
        client = tracking.connect(settings)
        with tracking.server_answering(client, settings, "the alias may not have moved: run the command again"):
            return {"model": settings.model_name, **move(client, settings.model_name)}

    def render(r: dict[str, Any]) -> None:
        console.print(f"{r['model']}@champion -> version {r['champion']} (was {r['previous']})")

    _run(command, as_json, render)


@app.command("build-env")
def build_env(
    dataset: str = DatasetOption,
    store: str | None = StoreOption,
    protocol: str = typer.Option("paper", "--protocol", help="paper (as published) or strict (held-out users)."),
    as_json: bool = JsonOption,
) -> None:
    """Build the dataset's simulator (ground-truth rewards, quit rule), or reuse the one cached for its data."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config
        from mdt4rec_core.envs.api import build_env

        return build_env(load_run_config(store=store).store, dataset, protocol)

    def render(info: dict[str, Any]) -> None:
        state = "built" if info["built"] else "cached, reused"
        console.print(
            f"[bold]{info['dataset']}[/] {info['protocol']} environment {info['version']} ({state}): "
            f"{info['users']:,} users ({info['start_users']:,} start episodes), {info['items']:,} items, "
            f"quit rule {info['quit_rule']}; {info['seconds']:.1f} s"
        )

    _run(command, as_json, render)


@app.command()
def evaluate(
    env: str = typer.Option(
        "ml-1m", "--env", help="A dataset environment (ml-1m, ml-100k, coat, yahoo-r3, kuairec, kuairand-pure)."
    ),
    policy: str = typer.Option("random", "--policy", help="random, popularity or checkpoint:<folder>."),
    mode: str = typer.Option("FB", "--mode", help="FB, NX_0 or NX_10."),
    episodes: int = typer.Option(1000, "--episodes", help="Episodes per seed."),
    seeds: int = typer.Option(1, "--seeds", help="Number of seeds (0, 1, ...)."),
    protocol: str = typer.Option("paper", "--protocol", help="paper or strict."),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Run a policy in a simulator and report R_cumu, Length and R_avg with 95% intervals."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config
        from mdt4rec_core.envs.api import evaluate_policy

        return evaluate_policy(load_run_config(store=store).store, env, policy, mode, episodes, seeds, protocol)

    def render(r: dict[str, Any]) -> None:
        console.print(
            f"[bold]{r['policy']}[/] in {r['env']} ({r['protocol']}, {r['mode']}): R_cumu {r['R_cumu']:.2f} "
            f"± {r['R_cumu_ci95']:.2f}, Length {r['Length']:.2f}, R_avg {r['R_avg']:.3f} over {r['episodes']:,} "
            f"episodes ({len(r['seeds'])} seeds), {r['episodes_per_second']:,.0f} episodes/s"
        )

    _run(command, as_json, render)


@app.command("sardine-logs")
def sardine_logs(
    env: str = typer.Option("sardine/SingleItem-Static-v0", "--env", help="A SARDINE gymnasium id."),
    users: int = typer.Option(500, "--users", help="Users (episodes) to log."),
    epsilon: float = typer.Option(0.5, "--epsilon", help="Probability of a random item instead of the oracle's."),
    seed: int = typer.Option(0, "--seed"),
    store: str | None = StoreOption,
    as_json: bool = JsonOption,
) -> None:
    """Log an epsilon-greedy oracle in a SARDINE environment and ingest the log into the store."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config, resolve_dataset
        from mdt4rec_core.data.store import Store
        from mdt4rec_core.envs import sardine
        from tasks.ingest import run_ingest

        config = load_run_config(dataset=sardine.dataset_name(env), store=store)
        landing = sardine.land_log(Store(config.store), env, users, epsilon, seed)
        summary = run_ingest(config, resolve_dataset(config.dataset, landing, "parquet"))
        return {"env": env, "epsilon": epsilon, "seed": seed, **summary}

    _run(command, as_json, _render_ingest)


@app.command("train")
def train_command(
    dataset: str = DatasetOption,
    store: str | None = StoreOption,
    preset: str = typer.Option("tiny", "--preset", help="conf/models/<preset>.yaml: tiny, cpu or paper."),
    overrides: list[str] | None = SetOption,
    max_steps: int | None = typer.Option(None, "--max-steps", help="Training steps (train.max_steps)."),
    out: str = typer.Option(
        "runs/latest",
        "--out",
        help="Run folder: checkpoint/, optimizer state; resumed if present (a run of other data or other model "
        "settings is refused: choose another folder).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Train MDT4Rec on the dataset's current trajectory set (resumes a killed run in the same --out), the way the
    pipeline's train task does (scale.train_processes > 1: under torchrun)."""

    def command() -> dict[str, Any]:
        from pathlib import Path

        from mdt4rec_core.config import load_run_config

        assignments = list(overrides or []) + ([f"train.max_steps={max_steps}"] if max_steps else [])
        run = load_run_config(dataset=dataset, overrides=assignments, preset=preset, store=store)
        from tasks.training import train_model

        summary = train_model(run, Path(out))
        summary.pop("history")
        return summary

    def render(r: dict[str, Any]) -> None:
        console.print(
            f"trained {r['steps']} steps (from {r['resumed_from']}): loss {r['train_loss_first']:.4f} -> "
            f"{r['train_loss_last']:.4f}, validation {r['val_loss']}, {r['trainable_params']:,} of "
            f"{r['total_params']:,} parameters trainable, {r['windows_per_second']:.1f} windows/s; "
            f"checkpoint {r['checkpoint']}"
        )

    _run(command, as_json, render)


@app.command()
def recommend(
    checkpoint: str = typer.Option(..., "--checkpoint", help="A checkpoint folder (…/checkpoint)."),
    history: str = typer.Option(..., "--history", help="Items of the episode so far, oldest first, comma separated."),
    feedback: str | None = typer.Option(None, "--feedback", help="Their feedback, comma separated (raw scale)."),
    k: int = typer.Option(10, "-k", help="How many items."),
    no_search: bool = typer.Option(False, "--no-search", help="Plain DT conditioning on the full history (-Max)."),
    device: str | None = DeviceOption,
    as_json: bool = JsonOption,
) -> None:
    """Recommend the next items for one user with maximum in-support return search (the checkpoint's settings)."""

    def command() -> dict[str, Any]:
        from pathlib import Path

        from mdt4rec_core.errors import InputError
        from mdt4rec_core.inference.recommend import recommend as run
        from mdt4rec_core.model.checkpoint import checkpoint_search

        items = [i.strip() for i in history.split(",") if i.strip()]
        try:
            values = [float(v) for v in feedback.split(",")] if feedback else None
        except ValueError:
            raise InputError(f"--feedback must be numbers, got {feedback!r}") from None
        config = checkpoint_search(Path(checkpoint)).model_copy(update={"search": False}) if no_search else None
        return run(Path(checkpoint), items, values, k, config, device=device)

    def render(r: dict[str, Any]) -> None:
        console.print(f"history length used: {r['chosen_history_length']}; items: {', '.join(map(str, r['items']))}")

    _run(command, as_json, render)


@app.command()
def score(
    checkpoint: str = typer.Option(
        ...,
        "--checkpoint",
        help="A checkpoint folder, or a registered version: models:/mdt4rec@champion, models:/mdt4rec/3 "
        "(MLFLOW_TRACKING_URI, else ./mlflow.db).",
    ),
    users: str = typer.Option(
        "all",
        "--users",
        help="all, or a file of user ids: .parquet or .csv with a user_id column, else one id per line. Ids with "
        "no stored event are skipped and reported.",
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        help="A Parquet file for the recommendations (default: the store, recommendations/dataset=<d>/model=<m>/).",
    ),
    k: int = typer.Option(10, "-k", help="Items per user."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Whose stored logs give the histories (default: the model's training dataset)."
    ),
    store: str | None = StoreOption,
    device: str | None = DeviceOption,
    as_json: bool = JsonOption,
) -> None:
    """Recommend the top-k items to many users at once from their most recent stored events (one batched search per
    chunk of users); every item a user acted on is left out."""

    def command() -> dict[str, Any]:
        from mdt4rec_core.config import load_run_config
        from tasks import scoring

        config = load_run_config(store=store)
        scored = scoring.score_users(checkpoint, users, k, config.store, dataset, config.tracking, device)
        return scoring.save_to_file(scored, out) if out else scoring.save_to_store(scored)

    def render(r: dict[str, Any]) -> None:
        from tasks.scoring import skipped_lines

        for line in skipped_lines(r):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print(
            f"scored {r['users_scored']:,} users of {r['dataset']} with {r['model']} (k {r['k']}, histories of up to "
            f"{r['history_length']} steps): {r['rows']:,} rows in {r['seconds']} s ({r['users_per_second']} "
            f"users/s) -> {r['out']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    _run(command, as_json, render)


StudySetOption = typer.Option(
    None, "--set", help="Override a budget key: --set episodes=100, --set arms=[random,mdt4rec]"
)


@app.command()
def study(
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="conf/datasets/<name>.yaml (default: the budget's dataset)."
    ),
    budget: str = typer.Option("smoke", "--budget", help="conf/studies/<budget>.yaml: smoke, cpu or gpu."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds 0..N-1 of every (protocol, arm)."),
    store: str | None = StoreOption,
    out: str = typer.Option("studies", "--out", help="The study goes to <out>/<dataset>-<budget>/ (resumed there)."),
    results: str | None = typer.Option(
        None,
        "--results",
        help="Also write the table into this markdown file, between <!-- study:<dataset>:<budget>:begin/end -->.",
    ),
    overrides: list[str] | None = StudySetOption,
    finished_only: bool = typer.Option(
        False, "--finished-only", help="Run nothing: summarise the finished cells (a study still running elsewhere)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Run a study: every arm (MDT4Rec, its ablations, the baselines) x protocol x seed on the same trajectories and
    simulator, then summarise it, log it to MLflow (MLFLOW_TRACKING_URI or conf/pipeline.yaml) and print the table.
    Finished cells are reused: an interrupted study resumes where it stopped."""

    def command() -> dict[str, Any]:
        from pathlib import Path

        from mdt4rec_core.config import load_run_config
        from tasks import study as steps
        from tasks.tracking import connect

        assignments = list(overrides or [])
        config = steps.load_budget(budget, assignments, dataset)  # bad input fails here, before any work
        steps.study_dataset(config)
        steps.plan_cells(config, seeds, Path(out))
        steps.check_study_folder(steps.study_root(out, config.dataset, budget), config)
        pipeline = load_run_config(store=store)
        client = connect(pipeline.tracking)
        result = steps.run_study(budget, seeds, pipeline.store, out, assignments, dataset, finished_only)
        result["mlflow"] = steps.log_study(pipeline.tracking, result, client)
        if results:
            markdown = Path(result["paths"]["markdown"]).read_text(encoding="utf-8")
            steps.replace_section(Path(results), result["dataset"], budget, markdown)
            result["paths"]["results"] = results
        from tasks.json_output import json_ready

        return json_ready(result)

    def render(r: dict[str, Any]) -> None:
        from pathlib import Path

        markdown = Path(r["paths"]["markdown"]).read_text(encoding="utf-8")
        console.print(markdown, markup=False, highlight=False, soft_wrap=True)
        console.print(
            f"{len(r['cells'])} cells ({r['cells_reused']} reused) in {r['seconds']:.0f} s; study in "
            f"{r['paths']['folder']}; MLflow run {r['mlflow']['parent_run_id']} in {r['mlflow']['experiment']} at "
            f"{r['mlflow']['tracking_uri']}" + (f"; table written to {r['paths']['results']}" if results else ""),
            markup=False,
            soft_wrap=True,
        )

    _run(command, as_json, render)


def check_registry_exists(uri: str) -> None:
    """An InputError when the registry at ``uri`` is a sqlite file that does not exist: MLflow would create an empty
    one instead of finding the pipeline's."""
    from mdt4rec_core.errors import InputError

    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if path is not None and not Path(path).is_file():
        raise InputError(
            f"no model registry: {path} does not exist; run from the folder that holds the pipeline's mlflow.db "
            "or set MLFLOW_TRACKING_URI"
        )


def _format(value: str | None):
    from typing import get_args

    from mdt4rec_core.config import ReaderFormat
    from mdt4rec_core.errors import InputError

    if value is not None and value not in get_args(ReaderFormat):
        raise InputError(f"unknown format {value!r} (known: {', '.join(get_args(ReaderFormat))})")
    return value


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm's progress bars (MLflow artifacts, GGUF conversion)
    app()
