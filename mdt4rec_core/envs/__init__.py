"""Simulators: data-driven environments built from logged feedback, quit rules, the evaluation loop and metrics."""
