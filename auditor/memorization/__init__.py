"""Mem and influence: shard designs (sharding), the stacked shadow-model engine and where it runs (shadow_engine,
executor), how many models (shadow_budget), the estimates with their intervals (estimates), which points are
scored (audit_sample), proxy calibration, and the tables they read and write (docs/layout.md)."""
