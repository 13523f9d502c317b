"""Which users to score, and each one's most recent logged events: the episode a batch recommendation continues.

A user's context is built from their stored interactions (all of them, so that users the trajectory set leaves out,
such as the strict protocol's held-out users, are scored too), sorted by time then item id as trajectories are:
their last ``length + 1`` events on items the model knows. The first of these is the episode's initial item (its
feedback hidden, as in training), the other ``length`` are its actions with their logged feedback; ``length`` is the
longest history the model met in training (``history_length``), so the decision step and every candidate window the
stitched search compares lie within what it was trained on. Events on items outside the model's catalogue (items
logged after it was trained) are left out and counted. Every item a user acted on is listed in ``seen``, to be
excluded from their recommendations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mdt4rec_core.config import check_dataset_name
from mdt4rec_core.data.schema import FEEDBACK, ITEM_ID, TIMESTAMP, USER_ID
from mdt4rec_core.data.store import Store
from mdt4rec_core.errors import InputError
from mdt4rec_core.model.network import MDT4Rec


@dataclass(frozen=True)
class LoggedHistories:
    """``frame``: one row per user that can be scored, sorted by ``user_id``, with ``items`` (list of catalogue
    indices, oldest first: the initial item, then up to ``length`` actions), ``feedback`` (their raw feedback) and
    ``seen`` (every catalogue index the user acted on). ``unknown_users``: requested ids with no stored event, in
    the order asked; ``without_known_items``: users whose every event is on an item outside the catalogue;
    ``events_on_unknown_items``: the events left out for that reason."""

    frame: pl.DataFrame
    unknown_users: list[str]
    without_known_items: list[str]
    events_on_unknown_items: int


def history_length(model: MDT4Rec) -> int:
    """Actions per context: one fewer than the shorter of the model's window (K steps) and its longest training
    episode, so that the decision after them is a step the model was trained to take (at least 1)."""
    return max(1, min(model.config.context_steps, model.shape.max_timestep) - 1)


def logged_histories(
    store: Store, dataset: str, catalogue: pl.DataFrame, users: list[str] | None, length: int
) -> LoggedHistories:
    """The contexts' events of ``users`` (None: every user with a stored event) from ``dataset``'s stored
    interactions; ``catalogue`` maps the model's ``item_id`` to its ``index``. An unsafe dataset name, or no stored
    interaction, is an InputError naming the dataset (and the store)."""
    scan = store.scan_interactions(check_dataset_name(dataset))
    if scan is None:
        raise InputError(
            f"no interactions of dataset {dataset!r} in the store {store.uri}: run `mdt4rec ingest --dataset "
            f"{dataset} --store {store.uri}` first, or choose the dataset with --dataset"
        )
    events = scan.select(USER_ID, ITEM_ID, TIMESTAMP, FEEDBACK)
    if users is not None:
        events = events.filter(pl.col(USER_ID).is_in(pl.Series(users, dtype=pl.String)))
    with store.reading(f"interactions/dataset={dataset}"):
        events = (
            events.join(catalogue.lazy().select(ITEM_ID, "index"), on=ITEM_ID, how="left")
            .sort(USER_ID, TIMESTAMP, ITEM_ID)
            .collect()
        )
    known = events.filter(pl.col("index").is_not_null())
    frame = known.group_by(USER_ID, maintain_order=True).agg(
        pl.col("index").tail(length + 1).alias("items"),
        pl.col(FEEDBACK).tail(length + 1).alias("feedback"),
        pl.col("index").unique().alias("seen"),
    )
    logged = set(events[USER_ID].unique().to_list())
    scored = set(frame[USER_ID].to_list())
    return LoggedHistories(
        frame=frame,
        unknown_users=[user for user in users if user not in logged] if users is not None else [],
        without_known_items=sorted(logged - scored),
        events_on_unknown_items=events.height - known.height,
    )


def read_user_ids(path: Path) -> list[str]:
    """The user ids listed in ``path``, first occurrences in file order: a ``.parquet`` or ``.csv`` file with a
    ``user_id`` column, else a text file with one id per line (surrounding spaces and blank lines ignored). A file
    that cannot be read, has no ``user_id`` column, holds an empty id or lists none is an InputError naming the file
    (and the row)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (give --users all, or a file listing user ids)")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".csv"):
        ids = _column_ids(path, suffix)
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable UTF-8 text file ({type(exc).__name__})") from None
        ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise InputError(f"{path}: lists no user id")
    return list(dict.fromkeys(ids))


def _column_ids(path: Path, suffix: str) -> list[str]:
    """The ``user_id`` column of a Parquet or CSV file as strings; an empty or null id is an InputError naming its
    row (CSV: the line number, header included; Parquet: the 1-based row)."""
    kind = "Parquet" if suffix == ".parquet" else "CSV"
    try:
        table = pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{path}: not a readable {kind} file ({type(exc).__name__})") from None
    if USER_ID not in table.columns:
        raise InputError(f"{path}: no {USER_ID} column (columns: {', '.join(table.columns) or 'none'})")
    ids = table[USER_ID].cast(pl.String).str.strip_chars()
    empty = (ids.is_null() | (ids == "")).arg_true()
    if len(empty):
        row = int(empty[0]) + (2 if suffix == ".csv" else 1)
        raise InputError(f"{path}: {'line' if suffix == '.csv' else 'row'} {row}: {USER_ID} is empty")
    return ids.to_list()
