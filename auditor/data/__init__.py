"""What goes in: the DATA argument read as rows (manifest), every file decoded once (ingest, images), the shipped
default dataset, split tensors, thumbnails, and the samples/classes tables (docs/layout.md)."""
