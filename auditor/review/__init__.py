"""What the dashboard reads (queries, point_queries), review decisions (reviews) and the cleaned manifest (export)
(docs/layout.md)."""
