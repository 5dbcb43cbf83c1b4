"""Benchmark harness: the daemon side by side with two reference servers (``python -m bench``)."""
