"""The layer under all others: what every layer uses and that knows no protocol.

Metrics (the Prometheus registry), JSON log lines and token buckets.
Nothing here imports another layer (import-linter's `layers` contract, pyproject.toml).
"""
