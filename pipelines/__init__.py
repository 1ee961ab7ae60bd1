"""Pipeline stages and the job runner: call `auditor`, write results to the audit DuckDB file."""
