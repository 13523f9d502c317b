"""The MLflow pyfunc model of a trained checkpoint (logged as code: loading it unpickles nothing).

Input: one row per user, ``history`` (item ids, oldest first) and optionally ``feedback`` (raw feedback per history
item); the request parameter ``k`` (default 10). Output: ``items`` (the top-k item ids) and ``chosen_history_length``
(the stitched search's w*).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mdt4rec_core.errors import InputError
from mdt4rec_core.inference.recommend import Recommender

DEFAULT_K = 10


class MDT4RecModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.recommender = Recommender(Path(context.artifacts["checkpoint"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "history" not in model_input.columns:
            raise MlflowException("each request row needs a 'history' (a list of item ids)", INVALID_PARAMETER_VALUE)
        k = int((params or {}).get("k", DEFAULT_K))
        answers = []
        for row, record in enumerate(model_input.to_dict("records")):
            try:
                answer = self.recommender.recommend(
                    [str(item) for item in _as_list(record["history"])], _optional_list(record.get("feedback")), k
                )
            except InputError as error:
                raise MlflowException(f"row {row}: {error}", INVALID_PARAMETER_VALUE) from None
            answers.append({"items": answer["items"], "chosen_history_length": answer["chosen_history_length"]})
        return pd.DataFrame(answers, columns=["items", "chosen_history_length"])


def _as_list(value) -> list:
    if isinstance(value, str):
        return [part for part in value.split(",") if part]
    return list(value) if value is not None else []


def _optional_list(value) -> list[float] | None:
    """Feedback values, or None when the row has none (None, or the NaN a column other rows filled leaves)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return [float(v) for v in _as_list(value)]


mlflow.models.set_model(MDT4RecModel())
