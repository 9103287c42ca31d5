"""Accounting: who used which GPUs, how well, and what each team owes.

- `pricebook`: the price of a GPU-hour per model (YAML).
- `prometheus`: a client for any Prometheus-compatible query API.
- `kube`: owner chains, Kueue queues and cohorts from the Kubernetes API.
- `ledger`: the durable hourly ledger (SQLite or PostgreSQL, SQLAlchemy Core).
- `ingest`: hourly, idempotent, resumable ingestion from Prometheus into the ledger.
- `costmodel`: the arithmetic of docs/cost-model.md (exact, conserving).
- `chargeback`: a period's chargeback as a pandas DataFrame, by any grouping.
- `reports`: monthly CSV, Parquet and FOCUS files.
- `cli`: `gpuledger accounting ingest|report`.
"""
