"""Great Expectations suites guarding stored interactions and trajectories.

GX has no Polars backend: each frame is validated as a pandas view, in chunks of whole users so that memory stays
bounded on large logs while per-user properties (uniqueness of events, episode structure) are still checked whole.
Data Docs HTML for every validation lands under ``<store>/reports/``: a site shows what the process validated
into it (an ingest's interactions and trajectories), never another site's results.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import polars as pl  # noqa: E402
import polars.selectors as cs  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.exceptions import DataContextError  # noqa: E402

# GX pins this module's logger to INFO, and it narrates creating a temporary Data Docs folder that it never uses.
logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

from mdt4rec_core.config import RunConfig, TrajectoryConfig  # noqa: E402
from mdt4rec_core.data.checks import interaction_view, trajectory_view  # noqa: E402
from mdt4rec_core.data.schema import EARLIEST_TIME, FUTURE_TOLERANCE, SOURCE_FILE, USER_ID  # noqa: E402
from mdt4rec_core.data.store import DAMAGED, Store  # noqa: E402
from mdt4rec_core.data.trajectories import stored_stats, trajectory_dir  # noqa: E402
from mdt4rec_core.errors import InputError, StoreError, describe_os_error  # noqa: E402

MAX_ROWS_PER_CHUNK = 2_000_000
RESIDUAL_TOLERANCE = 1e-3


class ValidationFailed(InputError):
    """A suite failed; the message is the readable summary and names the Data Docs page."""


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    columns: str
    success: bool
    unexpected_count: int
    examples: list


@dataclass
class ValidationReport:
    suite: str
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    data_docs: str | None = None

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    def summary(self) -> str:
        failed = [o for o in self.outcomes if not o.success]
        met = len(self.outcomes) - len(failed)
        head = f"suite {self.suite!r}: {met}/{len(self.outcomes)} expectations met on {self.rows:,} rows"
        lines = [head] + [f"  FAILED {o.expectation}({o.columns}): {self._finding(o)}" for o in failed]
        if self.data_docs:
            lines.append(f"  Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def _finding(self, outcome: ExpectationOutcome) -> str:
        """What a failed expectation found: its unexpected rows, or (for one on the whole column, such as its
        maximum, which counts no rows) what it observed."""
        if not outcome.unexpected_count and outcome.examples:
            return "; ".join(str(e) for e in outcome.examples[:5])
        share = 100 * outcome.unexpected_count / max(self.rows, 1)
        return f"{outcome.unexpected_count:,} unexpected ({share:.3g}%), e.g. {outcome.examples[:5]}"

    def as_dict(self) -> dict:
        return {
            "suite": self.suite,
            "success": self.success,
            "rows": self.rows,
            "data_docs": self.data_docs,
            "failed": [o.__dict__ for o in self.outcomes if not o.success],
        }


def interaction_expectations(now: dt.datetime) -> list:
    """Types, nulls, ranges and uniqueness of (user, item, timestamp) for a batch of events."""
    latest = now + FUTURE_TOLERANCE
    return [
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_id", "item_id", "timestamp", "feedback")],
        gxe.ExpectColumnValuesToBeOfType(column="user_id", type_="str"),
        gxe.ExpectColumnValuesToBeOfType(column="item_id", type_="str"),
        gxe.ExpectColumnValuesToBeOfType(column="timestamp", type_="Timestamp"),
        gxe.ExpectColumnValuesToBeOfType(column="feedback", type_="float64"),
        gxe.ExpectColumnValuesToBeBetween(column="feedback", min_value=0),
        gxe.ExpectColumnMinToBeBetween(column="timestamp", min_value=EARLIEST_TIME),
        gxe.ExpectColumnMaxToBeBetween(column="timestamp", max_value=latest),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]),
    ]


def trajectory_expectations(config: TrajectoryConfig, items: int) -> list:
    """Ranges, catalogue membership, return-to-go consistency, time order and episode structure of steps."""
    return [
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=c)
            for c in ("user_id", "episode", "step", "action", "reward", "return_to_go")
        ],
        gxe.ExpectColumnValuesToBeBetween(column="reward", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="return_to_go", min_value=0, max_value=config.max_episode_steps),
        gxe.ExpectColumnValuesToBeBetween(
            column="return_to_go_residual", min_value=-RESIDUAL_TOLERANCE, max_value=RESIDUAL_TOLERANCE
        ),
        gxe.ExpectColumnValuesToBeBetween(column="action", min_value=0, max_value=items - 1),
        gxe.ExpectColumnValuesToBeBetween(column="state_item_min", min_value=-1, max_value=items - 1),
        gxe.ExpectColumnValuesToBeBetween(column="state_item_max", min_value=-1, max_value=items - 1),
        gxe.ExpectColumnValuesToBeBetween(column="state_length", min_value=0, max_value=config.state_length),
        gxe.ExpectColumnValuesToBeBetween(column="step", min_value=0, max_value=config.max_episode_steps - 1),
        gxe.ExpectColumnValuesToBeBetween(column="step_increment", min_value=1, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="seconds_since_previous_step", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="terminal_steps_in_episode", min_value=1, max_value=1),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "episode", "step"]),
    ]


def validate_interactions(
    accepted: pl.DataFrame, reports_dir: Path, now: dt.datetime | None = None
) -> ValidationReport:
    now = now or dt.datetime.now(dt.UTC)
    return run_suite("interactions", interaction_view(accepted), interaction_expectations(now), reports_dir)


def validate_trajectories(
    steps: pl.DataFrame, config: TrajectoryConfig, items: int, reports_dir: Path
) -> ValidationReport:
    return run_suite("trajectories", trajectory_view(steps), trajectory_expectations(config, items), reports_dir)


def files_failing_interactions(accepted: pl.DataFrame, now: dt.datetime) -> list[str]:
    """The source files (column ``source_file``) of ``accepted`` whose rows fail the interaction suite, each file's
    rows validated on their own; every file when none fails alone (only their rows together fail)."""
    files = accepted.partition_by(SOURCE_FILE, as_dict=True, maintain_order=True)
    failing = [
        str(file)
        for (file,), rows in files.items()
        if not check_suite("interactions", interaction_view(rows), interaction_expectations(now)).success
    ]
    return failing or [str(file) for (file,) in files]


def failure_message(report: ValidationReport, sources: list[str]) -> str:
    """The report's summary after the sources whose rows failed. The first line (a ValidationFailed's error line)
    names up to three of them; when there are more, a last line lists them all."""
    shown = ", ".join(sources[:3])
    if len(sources) <= 3:
        return f"{shown}: {report.summary()}"
    head = f"{shown} (and {len(sources) - 3} more, listed below): {report.summary()}"
    return "\n".join([head, f"  rows failed in: {', '.join(sources)}"])


def run_suite(name: str, view: pl.DataFrame, expectations: list, reports_dir: Path) -> ValidationReport:
    """Validate ``view`` (see ``check_suite``) and build the Data Docs site in ``reports_dir`` with its results."""
    context = _site_context(reports_dir)
    report = check_suite(name, view, expectations, context)
    if report.rows:
        report.data_docs = _build_docs(context, reports_dir)
    return report


def check_suite(name: str, view: pl.DataFrame, expectations: list, context=None) -> ValidationReport:
    """Validate ``view`` chunk by chunk (whole users per chunk), in ``context`` (the GX context that keeps the
    results; a new one when not given)."""
    report = ValidationReport(suite=name, rows=view.height)
    if view.height == 0:
        return report
    definition = _definition(_new_context() if context is None else context, name, expectations)
    chunks = max(1, math.ceil(view.height / MAX_ROWS_PER_CHUNK))
    merged: dict[tuple[str, str], ExpectationOutcome] = {}
    for chunk in _user_chunks(view, chunks):
        result = definition.run(batch_parameters={"dataframe": _as_pandas(chunk)}, result_format="SUMMARY")
        for outcome in _outcomes(result):
            key = (outcome.expectation, outcome.columns)
            previous = merged.get(key)
            merged[key] = (
                outcome
                if previous is None
                else ExpectationOutcome(
                    outcome.expectation,
                    outcome.columns,
                    previous.success and outcome.success,
                    previous.unexpected_count + outcome.unexpected_count,
                    (previous.examples + outcome.examples)[:20],
                )
            )
    report.outcomes = sorted(merged.values(), key=lambda o: (o.success, o.expectation, o.columns))
    return report


def _as_pandas(frame: pl.DataFrame):
    """pandas view with int64/float64 numbers: GX vectorises range checks only for those, and loops in Python
    over every value of any other numeric dtype."""
    return frame.with_columns(cs.integer().cast(pl.Int64), cs.float().cast(pl.Float64)).to_pandas()


def _new_context():
    """An in-memory GX context (about 5 ms to make)."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.data_sources.add_pandas("frames")
    return context


_SITE_CONTEXTS: dict[Path, object] = {}


def _site_context(reports_dir: Path):
    """The context whose results make the Data Docs site in ``reports_dir``, one per site and process: a site built
    from a shared context would show every store's validations, and each build would take longer than the last."""
    key = Path(os.path.abspath(reports_dir))
    if key not in _SITE_CONTEXTS:
        _SITE_CONTEXTS[key] = _new_context()
    return _SITE_CONTEXTS[key]


def _definition(context, name: str, expectations: list):
    """The validation definition of (suite, expectations) in ``context``, made on first use."""
    suite_name = f"{name}-{hashlib.sha256(repr(expectations).encode()).hexdigest()[:12]}"
    try:
        return context.validation_definitions.get(suite_name)
    except DataContextError:
        pass
    asset = context.data_sources.get("frames").add_dataframe_asset(suite_name)
    batch = asset.add_batch_definition_whole_dataframe("all rows")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    return context.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))


def _user_chunks(view: pl.DataFrame, chunks: int):
    if chunks == 1:
        yield view
        return
    bucket = view.select((pl.col(USER_ID).hash(seed=0) % chunks).alias("_bucket"))["_bucket"]
    for index in range(chunks):
        yield view.filter(bucket == index)


def _outcomes(result) -> list[ExpectationOutcome]:
    outcomes = []
    for item in result.results:
        kwargs = item.expectation_config.kwargs
        columns = kwargs.get("column") or ",".join(kwargs.get("column_list") or [])
        info = item.exception_info or {}
        errors = [info] if "raised_exception" in info else list(info.values())
        raised = [e.get("exception_message") for e in errors if isinstance(e, dict) and e.get("raised_exception")]
        unexpected = item.result.get("unexpected_count") or 0
        examples = raised or [_plain(v) for v in (item.result.get("partial_unexpected_list") or [])]
        if not item.success and not unexpected and "observed_value" in item.result:
            examples = examples or [f"observed {item.result['observed_value']}"]
        outcomes.append(
            ExpectationOutcome(item.expectation_config.type, columns, bool(item.success), int(unexpected), examples)
        )
    return outcomes


def _plain(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, (int, float, str, type(None))) else str(value)


def _build_docs(context, directory: Path) -> str:
    """Write the Data Docs site into ``directory``; a failed write (disk full, no permission) is a StoreError."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        context.update_data_docs_site(
            "local_site",
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(directory)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        context.build_data_docs(site_names=["local_site"])
    except OSError as exc:
        raise StoreError(f"{directory}: cannot write the Data Docs ({describe_os_error(exc)})") from None
    return str(directory / "index.html")


def reports_dir(store: Store, dataset: str) -> Path:
    """Where Data Docs go: under the store when it is local, else under ./reports."""
    base = Path(store.root) if store.is_local else Path("reports")
    return base / "reports" / f"dataset={dataset}"


def validate_stored(config: RunConfig, repair: bool = False) -> dict:
    """Run both suites over everything stored for ``config.dataset``: all interactions, and the current trajectory
    set part by part. Every stored file is first read in full: damaged files are a StoreError listing each (or, with
    ``repair``, are moved aside with what depends on them; see ``Store.repair``)."""
    store = Store(config.store)
    moved = store.repair(config.dataset) if repair else []
    check_undamaged(store, config.dataset)
    scan = store.scan_interactions(config.dataset)
    if scan is None:
        aside = f" (damaged files were moved into {store.url(DAMAGED)})" if moved else ""
        raise InputError(f"dataset {config.dataset!r} has nothing stored in {store.uri}{aside}: ingest it first")
    docs = reports_dir(store, config.dataset)
    reports = [validate_interactions(scan.collect(), docs)]
    stats = stored_stats(store, config.dataset)
    if stats is not None:
        folder = trajectory_dir(config.dataset, stats.version)
        for part in store.files(f"{folder}/steps", ".parquet"):
            reports.append(validate_trajectories(store.read_parquet(part), config.trajectories, stats.items, docs))
    return {
        "dataset": config.dataset,
        "success": all(r.success for r in reports),
        "suites": [r.as_dict() for r in reports],
        "repaired": [store.url(p) for p in moved],
        "ignored": [store.url(p) for p in store.stray_files(config.dataset)],
    }


def check_undamaged(store: Store, dataset: str) -> None:
    """Raise a StoreError when a stored file of ``dataset`` cannot be read in full: its first line names the first
    damaged file and what to do, the next lines name the others, one each."""
    damaged = store.damaged_files(dataset)
    if not damaged:
        return
    lines = [f"{store.url(d.relative)}: {d.problem}" for d in damaged]
    others = len(damaged) - 1
    more = f" (and {others} more damaged file{'s' if others > 1 else ''}, listed above)" if others else ""
    remedy = (
        f"`mdt4rec validate --repair --dataset {dataset} --store {store.uri}` moves them aside into "
        f"{store.url(DAMAGED)}, then `mdt4rec ingest --dataset {dataset}` rebuilds them from the sources"
    )
    raise StoreError("\n".join([f"{lines[0]}{more}: {remedy}", *lines[1:]]))
