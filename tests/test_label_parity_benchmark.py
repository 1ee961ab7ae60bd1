"""The label-parity benchmark's pooled metric on a hand-made case (the benchmark itself needs cleanlab and minutes)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from auditor.intervals import jeffreys_interval

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmark imports its sibling scripts
    return importlib.import_module("label_parity")


def test_pooled_prf_pools_the_counts_of_every_seed(bench):
    found = [np.array([True, True, False, False, False]), np.array([True, True, False])]
    truth = [np.array([True, False, True, False, False]), np.array([True, True, True])]
    s = bench.pooled_prf(found, truth)  # tp 1 + 2, fp 1 + 0, fn 1 + 1: not the mean of the seeds' rates
    assert (s["flagged"], s["planted"], s["hits"]) == (4, 5, 3)
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((0.75, 0.6, 2 / 3))
    assert (s["precision_low"], s["precision_high"]) == pytest.approx(tuple(map(float, jeffreys_interval(3, 4))))
    assert (s["recall_low"], s["recall_high"]) == pytest.approx(tuple(map(float, jeffreys_interval(3, 5))))
    assert s["f1_low"] < 2 / 3 < s["f1_high"]


def test_pooled_prf_without_flags_has_no_precision_and_zero_recall(bench):
    s = bench.pooled_prf([np.zeros(4, dtype=bool)], [np.array([True, False, True, False])])
    assert np.isnan(s["precision"]) and s["recall"] == 0.0 and s["f1"] == 0.0
