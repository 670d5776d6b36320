"""Scores of a binary classifier, as the study reports them (Dominguez Sanchez et al. 2019, Sec. 4).

Pure functions of ``y_true`` (0/1) and ``p`` (P(positive) per galaxy): ROC curve and AUC, TPR,
precision, accuracy and the confusion counts at a probability threshold ``p_threshold`` (the
study's is 0.5; it notes 0.5 is not optimal for the model applied as it is, experiment a, so
``choose_threshold`` picks one on validation data), and bootstrap intervals for every figure.
"""

from __future__ import annotations

import numpy as np

from morphtransfer.errors import InputError

METRIC_NAMES = ("tpr", "precision", "accuracy", "auc")


def _check(y_true, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(p, dtype="float64").reshape(-1)
    if y.shape != s.shape:
        raise InputError(f"{y.size} labels but {s.size} probabilities; they must pair up")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = sorted(set(np.unique(y).tolist()) - {0, 1})[:5]
        raise InputError(
            f"labels must be 0 or 1, found {bad}; drop galaxies without a robust label (-1) first"
        )
    if not np.isfinite(s).all():
        raise InputError("probabilities contain NaN or inf; the model output is broken")
    return y.astype("int64"), s


def roc_curve(y_true, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; a galaxy is positive when p >= threshold.

    The first point is (0, 0) at threshold +inf, as scikit-learn's ``drop_intermediate=False``.
    """
    y, s = _check(y_true, p)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            f"a ROC curve needs both classes; this sample has {n_pos} positives and {n_neg} negatives"
        )
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # one point per distinct score: cumulative counts at the last index of each tied run
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def roc_auc(y_true, p) -> float:
    """Area under the ROC curve (ties counted half: the Mann-Whitney statistic)."""
    y, s = _check(y_true, p)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # rank-sum form: exact, O(n log n), tie-aware (average ranks)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(s.size, dtype="float64")
    starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # average 1-based rank of each tied run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _rates(tp, fp, tn, fn):
    n = tp + fp + tn + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        accuracy = np.where(n > 0, (tp + tn) / np.maximum(n, 1), np.nan)
    return tpr, precision, accuracy


def binary_metrics(y_true, p, p_threshold: float = 0.5) -> dict:
    """TPR, precision, accuracy and confusion counts; a galaxy is positive when p > p_threshold.

    The study classifies a galaxy positive when its probability exceeds P_th (strictly).
    TPR = TP/(TP+FN), precision = TP/(TP+FP), accuracy = (TP+TN)/N; NaN when undefined.
    """
    y, s = _check(y_true, p)
    pred = s > p_threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tpr, precision, accuracy = _rates(np.float64(tp), np.float64(fp), np.float64(tn), np.float64(fn))
    return {
        "tpr": float(tpr),
        "precision": float(precision),
        "accuracy": float(accuracy),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": int(y.size),
        "n_pos": int(y.sum()),
        "p_threshold": float(p_threshold),
    }


def choose_threshold(y_true, p, rule: str = "youden") -> float:
    """A probability threshold chosen on validation data.

    rule="youden": maximise TPR - FPR (Youden's J); rule="accuracy": maximise accuracy.
    The returned value is usable with ``binary_metrics`` (positive when p > threshold): it is the
    midpoint between the chosen score and the next lower distinct score.
    """
    y, s = _check(y_true, p)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            f"choosing a threshold needs both classes in the validation sample "
            f"({n_pos} positives, {n_neg} negatives)"
        )
    fpr, tpr, thr = roc_curve(y, s)
    if rule == "youden":
        score = tpr - fpr
    elif rule == "accuracy":
        score = (tpr * n_pos + (1 - fpr) * n_neg) / y.size
    else:
        raise InputError(f"unknown threshold rule {rule!r}; use 'youden' or 'accuracy'")
    score[0] = -np.inf  # the +inf threshold (everything negative) is never useful
    i = int(np.argmax(score))
    # roc_curve counts p >= thr[i] as positive; binary_metrics uses p > threshold, so step just
    # below thr[i], halfway to the next distinct score (or a little below for the lowest one).
    lower = thr[i + 1] if i + 1 < thr.size else thr[i] - 1e-6
    return float((thr[i] + lower) / 2.0)


def bootstrap_intervals(
    y_true,
    p,
    p_threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals {name: (lo, hi)} for tpr, precision, accuracy and auc.

    Galaxies are resampled with replacement ``n_boot`` times (seeded); figures undefined in a
    resample (no positives) are left out of that figure's percentiles.
    """
    y, s = _check(y_true, p)
    nan2 = (float("nan"), float("nan"))
    if y.size == 0 or n_boot <= 0:
        return {k: nan2 for k in METRIC_NAMES}
    rng = np.random.default_rng(seed)
    # resamples in blocks so memory stays ~ a few x 4e6 numbers whatever the sample size
    block = max(1, int(4e6 // y.size))
    parts = []
    for start in range(0, n_boot, block):
        idx = rng.integers(0, y.size, size=(min(block, n_boot - start), y.size))
        yb = y[idx]
        predb = s[idx] > p_threshold
        tp = np.sum(predb & (yb == 1), axis=1).astype("float64")
        fp = np.sum(predb & (yb == 0), axis=1).astype("float64")
        tn = np.sum(~predb & (yb == 0), axis=1).astype("float64")
        fn = np.sum(~predb & (yb == 1), axis=1).astype("float64")
        parts.append((*_rates(tp, fp, tn, fn), _bootstrap_auc(y, s, idx)))
    tpr, precision, accuracy, auc = (np.concatenate(c) for c in zip(*parts))
    alpha = (1.0 - level) / 2.0
    out = {}
    for name, vals in (("tpr", tpr), ("precision", precision), ("accuracy", accuracy), ("auc", auc)):
        v = vals[np.isfinite(vals)]
        out[name] = (
            (float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))) if v.size else nan2
        )
    return out


def _bootstrap_auc(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUC of each bootstrap resample (rows of ``idx``), via draw counts per galaxy.

    For a resample with draw counts w_i, AUC = sum over (pos i, neg j) w_i w_j [s_i > s_j + half
    if equal] / (W_pos W_neg). Sorting by score once, the negatives' weight below each positive is
    a cumulative sum, so each resample costs O(n).
    """
    n = y.size
    n_boot = idx.shape[0]
    counts = np.zeros((n_boot, n), dtype="float64")
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted, w = s[order], y[order], counts[:, order]
    starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]  # tied runs of equal scores
    run_id = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, n]))
    w_neg = w * (y_sorted == 0)
    w_pos = w * (y_sorted == 1)
    # negatives' weight per tied run, and strictly below each run
    neg_run = np.add.reduceat(w_neg, starts, axis=1)
    neg_below = np.cumsum(neg_run, axis=1) - neg_run
    below = neg_below[:, run_id] + 0.5 * neg_run[:, run_id]
    num = np.sum(w_pos * below, axis=1)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def evaluate_predictions(
    y_true, p, p_threshold: float = 0.5, n_boot: int = 1000, seed: int = 0
) -> dict:
    """binary_metrics + auc, with ``<name>_lo``/``<name>_hi`` bootstrap 95% bounds."""
    out = binary_metrics(y_true, p, p_threshold)
    out["auc"] = roc_auc(y_true, p)
    for name, (lo, hi) in bootstrap_intervals(y_true, p, p_threshold, n_boot, seed).items():
        out[f"{name}_lo"] = lo
        out[f"{name}_hi"] = hi
    return out
