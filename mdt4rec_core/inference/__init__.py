"""Inference: maximum in-support return search over history lengths (stitching), batched across users and candidates."""
