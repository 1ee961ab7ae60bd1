"""Issue detectors, one small module per issue type (duplicates and leaks, long tail, label issues), all reading
the one kNN graph of auditor.detectors.neighbors; thresholds are calibrated per audit, never global constants."""
