"""The MLflow pyfunc model of a trained checkpoint (logged as code: loading it unpickles nothing).

Input: one row per user, ``history`` (item ids, oldest first) and optionally ``feedback`` (raw feedback per history
item; rows with and without it may share a request); the request parameter ``k`` (default 10); at most
``serving.max_users_per_request`` rows (the setting of the run that trained the checkpoint). The rows are answered
together, one batched search per chunk of users. Output: ``items`` (the top-k item ids) and
``chosen_history_length`` (the stitched search's w*). A bad request raises an MlflowException with
INVALID_PARAMETER_VALUE (status 400 when served) naming the row and the field.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mdt4rec_core.config import ServingConfig
from mdt4rec_core.errors import InputError
from mdt4rec_core.inference.recommend import Recommender
from mdt4rec_core.inference.search import EpisodeContext
from mdt4rec_core.model.checkpoint import read_run_config

DEFAULT_K = 10


class MDT4RecModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        """Load the checkpoint and the request limit of the run that trained it; a damaged checkpoint is an
        MlflowException naming its file. Nothing is read from outside the model's folder."""
        try:
            checkpoint = Path(context.artifacts["checkpoint"])
            self.recommender = Recommender(checkpoint)
            run = read_run_config(checkpoint)
        except InputError as error:
            raise MlflowException(str(error), INVALID_PARAMETER_VALUE) from None
        self.max_rows = (run.serving if run else ServingConfig()).max_users_per_request

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Every row checked first (the first bad row is refused, naming it), then all rows decided in one batched
        search per ``CHUNK_USERS`` rows: the same answers as one request per row."""
        if "history" not in model_input.columns:
            raise _bad_request("each request row needs a 'history' (a list of item ids)")
        if len(model_input) > self.max_rows:
            raise _bad_request(
                f"the request holds {len(model_input):,} rows; at most {self.max_rows:,} users per request "
                "(serving.max_users_per_request)"
            )
        k = _k(params)
        contexts = [self._context(row, record) for row, record in enumerate(model_input.to_dict("records"))]
        answers = [self.recommender.answer(decision) for decision in self.recommender.decide(contexts, k)]
        return pd.DataFrame(answers, columns=["items", "chosen_history_length"])

    def _context(self, row: int, record: dict) -> EpisodeContext:
        """The search context of one request row; bad input is a 400 naming the row."""
        try:
            history = [str(item) for item in _as_list(record["history"], "history")]
            return self.recommender.context(history, _feedback(record.get("feedback")))
        except InputError as error:
            raise _bad_request(f"row {row}: {error}") from None


def _bad_request(message: str) -> MlflowException:
    return MlflowException(message, INVALID_PARAMETER_VALUE)


def _k(params: dict | None) -> int:
    value = (params or {}).get("k", DEFAULT_K)
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"the parameter k must be an integer (got {value!r})") from None
    if k < 1:
        raise _bad_request(f"the parameter k must be at least 1 (got {k})")
    return k


def _as_list(value, field: str) -> list:
    """A list-valued field: a list or array as is, a string split at commas (CSV requests)."""
    if isinstance(value, str):
        return [part for part in value.split(",") if part]
    if isinstance(value, list | tuple | np.ndarray):
        return list(value)
    raise InputError(f"{field} must be a list (got {value!r})")


def _feedback(value) -> list | None:
    """A row's feedback values as sent, or None when the row has none: no key, null, or the NaN that a column other
    rows filled leaves in it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return _as_list(value, "feedback")


mlflow.models.set_model(MDT4RecModel())
