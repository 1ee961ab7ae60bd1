"""ApB and the other dynamics scores on hand-written logs with answers worked out by hand."""

import math

import pandas as pd
import pytest

from auditor.training.convergence import has_plateaued
from auditor.training.dynamics_scores import dynamics_scores, per_run_scores


def _log(run: str, sample: str, correct: list[int], p: list[float], el2n: list[float] | None = None) -> pd.DataFrame:
    n = len(correct)
    return pd.DataFrame({"run_id": run, "sample_id": sample, "step": [10 * i for i in range(n)],
                         "epoch": list(range(1, n + 1)), "correct": [bool(c) for c in correct], "p_label": p,
                         "el2n": el2n or [0.5] * n})


def test_per_run_scores_match_hand_computed_values():
    # a: learned at epoch 1 and never forgotten; b: learned, forgotten, relearned at epoch 4;
    # c: never correct; d: correct, then wrong at the end (not learned at the end -> NaN).
    log = pd.concat([
        _log("r", "a", [1, 1, 1, 1], [0.9, 0.9, 0.9, 0.9], [0.1, 0.2, 0.3, 0.4]),
        _log("r", "b", [0, 1, 0, 1], [0.2, 0.6, 0.4, 0.8]),
        _log("r", "c", [0, 0, 0, 0], [0.1, 0.1, 0.1, 0.1]),
        _log("r", "d", [1, 1, 1, 0], [0.7, 0.8, 0.9, 0.3]),
    ]).sample(frac=1.0, random_state=3)  # order must not matter
    got = per_run_scores(log, el2n_epoch=2).set_index("sample_id")
    assert got.loc["a", "apb"] == 1.0 and got.loc["b", "apb"] == 0.5
    assert got.loc["c", "apb"] == 0.0 and got.loc["d", "apb"] == 0.75
    assert got.loc["a", "first_learned"] == 1 and got.loc["b", "first_learned"] == 4
    assert math.isnan(got.loc["c", "first_learned"]) and math.isnan(got.loc["d", "first_learned"])
    # c was never correct: forgotten infinitely often (Toneva et al.), ranked above every learned example.
    assert list(got.loc[["a", "b", "c", "d"], "forgetting_events"]) == [0, 1, math.inf, 1]
    assert got.loc["b", "confidence"] == pytest.approx(0.5)
    # population std of [0.2, 0.6, 0.4, 0.8] = sqrt(0.05)
    assert got.loc["b", "variability"] == pytest.approx(math.sqrt(0.05))
    assert got.loc["a", "variability"] == pytest.approx(0.0, abs=1e-12)
    assert got.loc["a", "el2n"] == pytest.approx(0.2)
    assert set(got["n_records"]) == {4}


def test_records_are_ordered_by_step_not_by_row_order():
    log = _log("r", "x", [0, 1, 1], [0.1, 0.5, 0.9])
    log["step"] = [20, 0, 10]  # the wrong answer came last in time
    got = per_run_scores(log, el2n_epoch=1).iloc[0]
    assert got["forgetting_events"] == 1
    assert math.isnan(got["first_learned"])


def test_scores_average_over_seeds():
    log = pd.concat([
        _log("s0", "x", [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8]),
        _log("s1", "x", [0, 1, 1, 1], [0.3, 0.6, 0.7, 0.8]),
        _log("s0", "y", [0, 0, 0, 0], [0.1] * 4),
        _log("s1", "y", [0, 0, 0, 1], [0.1, 0.1, 0.1, 0.9]),
    ])
    got = dynamics_scores(log, el2n_epoch=1).set_index("sample_id")
    assert got.loc["x", "apb"] == pytest.approx((0.5 + 0.75) / 2)
    assert got.loc["x", "first_learned"] == pytest.approx(2.5)
    assert got.loc["y", "first_learned"] == 4  # only the seed that learned it counts
    assert got.loc["x", "forgetting_events"] == 0
    assert got.loc["y", "forgetting_events"] == math.inf  # never correct in seed s0
    assert got.loc["x", "n_seeds"] == 2 and got.loc["x", "n_records"] == 8


def test_every_n_batches_gives_ragged_records():
    log = pd.concat([_log("r", "x", [1, 0], [0.6, 0.4]), _log("r", "y", [1, 1, 1], [0.9] * 3)])
    got = per_run_scores(log, el2n_epoch=1).set_index("sample_id")
    assert got.loc["x", "apb"] == 0.5 and got.loc["y", "apb"] == 1.0
    assert got.loc["x", "n_records"] == 2 and got.loc["y", "n_records"] == 3


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="p_label"):
        per_run_scores(pd.DataFrame({"run_id": [], "sample_id": [], "step": [], "epoch": [], "correct": [],
                                     "el2n": []}), 1)


@pytest.mark.parametrize("curve, expected", [
    ([0.5, 0.8, 0.9, 0.95], False),         # still climbing
    ([0.5, 0.9, 0.902, 0.901], True),        # flat within tolerance
    ([0.9, 0.91], False),                    # too short to judge
    ([0.5, 0.9, 0.85, 0.88], True),          # dropped: no improvement over the best
])
def test_plateau_verdict(curve, expected):
    assert has_plateaued(curve, window=2, tolerance=0.005) is expected
