"""Scores of a binary classifier: hand-computed cases and scikit-learn as the reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from morphtransfer.errors import InputError
from morphtransfer.metrics import (
    binary_metrics,
    bootstrap_intervals,
    choose_threshold,
    evaluate_predictions,
    roc_auc,
    roc_curve,
)

Y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
P = np.array([0.9, 0.8, 0.4, 0.6, 0.3, 0.2, 0.1, 0.5])


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, P, 0.5)
    # positive when p > 0.5: 0.9, 0.8, 0.6 -> TP 2, FP 1; 0.5 itself is negative -> FN 2
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 3, 2)
    assert m["tpr"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert (m["n"], m["n_pos"], m["p_threshold"]) == (8, 4, 0.5)
    # nothing predicted positive: precision undefined, not 0
    assert np.isnan(binary_metrics(Y, P, 0.95)["precision"])


def test_auc_by_hand_and_against_sklearn():
    # pairs (pos, neg) ordered correctly: pos 0.9,0.8 beat all 4 negs (8); 0.5 beats 3 (3);
    # 0.4 beats 0.3,0.2,0.1 (3) -> 14 of 16
    assert roc_auc(Y, P) == pytest.approx(14 / 16)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    p = np.round(rng.random(1000) * 0.6 + 0.3 * y, 2)  # many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, p)
    f2, t2, th2 = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_choose_threshold_separates_a_separable_sample():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.9])  # 0.5 misses two positives
    t = choose_threshold(y, p)
    assert 0.2 <= t < 0.3
    assert binary_metrics(y, p, t)["accuracy"] == 1.0
    assert binary_metrics(y, p, 0.5)["tpr"] == pytest.approx(1 / 3)
    assert choose_threshold(y, p, rule="accuracy") == pytest.approx(t)
    with pytest.raises(InputError, match="both classes"):
        choose_threshold([1, 1], [0.1, 0.2])


def test_bootstrap_intervals_cover_and_match_direct_resampling():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, 400), 0, 1)
    ci = bootstrap_intervals(y, p, n_boot=400, seed=3)
    m = binary_metrics(y, p)
    for k in ("tpr", "precision", "accuracy"):
        lo, hi = ci[k]
        assert lo < m[k] < hi
        # a 95% interval of a proportion over ~200-400 galaxies is a few percent wide
        assert 0.02 < hi - lo < 0.2
    lo, hi = ci["auc"]
    assert lo < roc_auc(y, p) < hi
    # the vectorised bootstrap AUC equals scikit-learn on the same resamples
    from morphtransfer.metrics import _bootstrap_auc

    idx = np.random.default_rng(5).integers(0, 400, size=(4, 400))
    np.testing.assert_allclose(_bootstrap_auc(y, p, idx), [roc_auc_score(y[i], p[i]) for i in idx])
    # seeded: same seed, same interval
    assert bootstrap_intervals(y, p, n_boot=100, seed=7) == bootstrap_intervals(y, p, n_boot=100, seed=7)


def test_evaluate_predictions_keys_and_bad_input():
    m = evaluate_predictions(Y, P, n_boot=50)
    assert m["auc"] == pytest.approx(14 / 16)
    for k in ("tpr", "precision", "accuracy", "auc"):
        assert f"{k}_lo" in m and f"{k}_hi" in m
    with pytest.raises(InputError, match="0 or 1"):
        binary_metrics([0, -1], [0.1, 0.2])
    with pytest.raises(InputError, match="pair up"):
        roc_auc([0, 1], [0.1])
    with pytest.raises(InputError, match="NaN"):
        roc_auc([0, 1], [0.1, np.nan])
