"""Prefect flows chaining the tasks: ``ingest-logs`` (and, as they arrive, train-mdt4rec and evaluate)."""
