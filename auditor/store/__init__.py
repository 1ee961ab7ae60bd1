"""The DuckDB file: connections, schema and migrations (database), the read/write gate, views, run records, jobs,
provenance and one-line write errors (docs/layout.md)."""
