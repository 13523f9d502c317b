"""MDT4Rec model library: data, model, inference and evaluation in pure Python + torch.

This package never imports the orchestration stack (Prefect, MLflow, Great Expectations); ``tasks`` and ``flows``
wrap it.
"""

__version__ = "0.1.0"
