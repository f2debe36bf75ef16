"""The decision rules of lotterylab.studies.claims on literal cases, the CI arithmetic against scipy, and
claims.json."""

import json
import math

import numpy as np
import pytest
import xarray as xr

from lotterylab.studies import claims

BEATS = claims.beats("a_beats_b", "A beats B.", "A", "B", "test accuracy (%)", "98% sparsity")
LOWER = claims.beats("a_flatter", "A is flatter.", "A", "B", "top eigenvalue", lower_is_better=True)
AT_LEAST = claims.at_least("a_at_least_b", "A ≥ B.", "A", "B", "test accuracy (%)", margin=1.0)
MATCH = claims.matches("a_matches_b", "A matches B.", "A", "B", "test accuracy (%)", margin=1.0)


@pytest.mark.parametrize("claim, a, b, verdict", [
    # paired differences [2, 3, 4]: mean 3, sd 1, CI 3 ± 4.303/√3 = [0.52, 5.48], above 0
    (BEATS, [92, 93, 94], [90, 90, 90], "holds"),
    # differences [-2, -3, -4]: CI below 0
    (BEATS, [88, 87, 86], [90, 90, 90], "fails"),
    # differences [1, -1, 0.5]: CI contains 0
    (BEATS, [91, 89, 90.5], [90, 90, 90], "inconclusive"),
    # two seeds only: never a verdict, however large the gap
    (BEATS, [99, 99], [10, 10], "inconclusive"),
    # lower is better: A's values below B's hold
    (LOWER, [1.0, 1.1, 1.2], [2.0, 2.0, 2.1], "holds"),
    (LOWER, [3.0, 3.1, 3.2], [2.0, 2.0, 2.1], "fails"),
    # matches ±1: differences [0.1, -0.1, 0.0], CI ±0.25 inside ±1
    (MATCH, [90.1, 89.9, 90.0], [90, 90, 90], "holds"),
    # differences [5, 6, 7]: CI [3.5, 8.5] wholly above +1
    (MATCH, [95, 96, 97], [90, 90, 90], "fails"),
    # differences [0.5, 2.5, -1.5]: CI straddles the margin
    (MATCH, [90.5, 92.5, 88.5], [90, 90, 90], "inconclusive"),
    # at least, margin 1: A better holds (CI [0.52, 5.48] > -1); A level holds (CI ±0.25); A far worse fails
    (AT_LEAST, [92, 93, 94], [90, 90, 90], "holds"),
    (AT_LEAST, [90.1, 89.9, 90.0], [90, 90, 90], "holds"),
    (AT_LEAST, [85, 86, 87], [90, 90, 90], "fails"),
    # differences [-0.5, -2.5, 1.5]: CI straddles -1
    (AT_LEAST, [89.5, 87.5, 91.5], [90, 90, 90], "inconclusive"),
])
def test_decision_rule_on_literal_cases(claim, a, b, verdict):
    assert claims.evaluate(claim, a, b).verdict == verdict


def test_paired_ci_is_the_t_interval_of_the_differences():
    result = claims.evaluate(BEATS, [92, 93, 94], [90, 90, 90])
    half = 4.3027 * 1.0 / math.sqrt(3)
    assert result.difference.mean == pytest.approx(3.0)
    assert (result.difference.low, result.difference.high) == pytest.approx((3 - half, 3 + half), abs=1e-4)
    assert result.n_seeds == 3


def test_t_table_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert claims.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    for df in (2.5, 7.3, 45.0, 200.0):  # Welch df >= min(n) - 1 >= 2 wherever a verdict is possible
        assert claims.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-3)


def test_welch_interval_when_seeds_differ():
    stats = pytest.importorskip("scipy.stats")
    a = xr.DataArray([1.0, 2.0, 3.0, 4.0], dims="seed", coords={"seed": [0, 1, 2, 3]})
    b = xr.DataArray([0.0, 0.5, 1.5], dims="seed", coords={"seed": [5, 6, 7]})
    result = claims.evaluate(BEATS, a, b)
    expected = stats.ttest_ind(a.values, b.values, equal_var=False).confidence_interval(0.95)
    assert (result.difference.low, result.difference.high) == pytest.approx(tuple(expected), rel=5e-3)


def test_seed_pairs_with_a_missing_value_are_dropped():
    a = xr.DataArray([92, 93, np.nan, 94], dims="seed", coords={"seed": [0, 1, 2, 3]})
    b = xr.DataArray([90, 90, 90, 90], dims="seed", coords={"seed": [0, 1, 2, 3]})
    assert claims.evaluate(BEATS, a, b).n_seeds == 3


def test_values_with_other_dims_are_refused():
    both = xr.DataArray(np.zeros((3, 2)), dims=("seed", "target"))
    with pytest.raises(claims.ClaimError, match="besides 'seed'"):
        claims.evaluate(BEATS, both, both)


def test_ledger_refuses_undeclared_double_and_missing(tmp_path):
    ledger = claims.Ledger([BEATS, MATCH])
    with pytest.raises(claims.ClaimError, match="not declared"):
        ledger.evaluate("other", [1, 2, 3], [1, 2, 3])
    ledger.evaluate("a_beats_b", [92, 93, 94], [90, 90, 90])
    with pytest.raises(claims.ClaimError, match="evaluated twice"):
        ledger.evaluate("a_beats_b", [92, 93, 94], [90, 90, 90])
    with pytest.raises(claims.ClaimError, match="never evaluated"):
        ledger.finish(tmp_path, "toy", "cpu")
    with pytest.raises(claims.ClaimError, match="declared twice"):
        claims.Ledger([BEATS, BEATS])


def test_claims_json_has_the_documented_shape(tmp_path):
    ledger = claims.Ledger([BEATS, MATCH])
    ledger.evaluate("a_beats_b", [92, 93, 94], [90, 90, 90])
    ledger.evaluate("a_matches_b", [90.1, 89.9, 90.0], [90, 90, 90])
    ledger.finish(tmp_path, "toy", "cpu")
    document = json.loads((tmp_path / "claims.json").read_text())
    assert {"study", "scale", "commit", "claims"} <= set(document)
    first = document["claims"][0]
    assert {"id", "statement", "rule", "verdict", "n_seeds", "values", "difference"} <= set(first)
    assert first["values"]["A"]["mean"] == pytest.approx(93.0) and len(first["values"]["A"]["ci95"]) == 2
    assert first["difference"]["mean"] == pytest.approx(3.0)
    assert [c["verdict"] for c in document["claims"]] == ["holds", "holds"]


def test_sentence_and_table_state_the_same_numbers():
    result = claims.evaluate(BEATS, [92, 93, 94], [90, 90, 90])
    text = claims.sentence(result)
    assert "A 93.0" in text and "B 90.0" in text and "+3.0" in text and text.endswith("the claim holds.")
    html = claims.table([result])
    assert "+3.0" in html and "holds" in html and "1 claims: 1 holds, 0 fails, 0 inconclusive" in html
