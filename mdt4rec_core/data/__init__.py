"""Data layer: canonical schemas, raw-format readers, the Parquet stores and trajectory building."""
