"""Prefect tasks: thin wrappers that call mdt4rec_core, validate with Great Expectations and (later) log to MLflow."""
