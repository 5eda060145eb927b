"""c3fs benchmark harness: `python -m bench gen|run` (see bench/README.md)."""
