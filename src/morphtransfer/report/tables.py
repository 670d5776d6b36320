"""Metrics from predictions, and the study's Table 2 (markdown, CSV, LaTeX).

Everything here is computed from ``predictions.parquet`` alone (one row per experiment, seed and
test galaxy), so that every number of ``metrics.json`` and ``table2.*`` can be recomputed from it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.study import EXPERIMENT_TITLES, LEVELS

GROUP = ["task", "experiment", "n_train_target", "seed"]
METRICS = ("tpr", "precision", "accuracy", "auc")
# A row of Table 2 "reaches the (0) level" when its mean AUC is within this of the (0) AUC:
# about the bootstrap half-width of an AUC on a few hundred test galaxies.
REACH_TOLERANCE = 0.02
# A model is "flat" when its P varies by less than this (standard deviation over the test
# galaxies): its training was still on, or just leaving, the loss plateau at ln 2 (P ~ one value
# for every galaxy). From-scratch training (d) of DS18 on a few hundred galaxies often ends there
# within the epochs it gets. Every galaxy then falls on one side of P_th, so its TPR, precision
# and accuracy only say which side; its AUC ranks by differences of ~1e-3 in P and may still
# carry signal (flat (d) models of the preset runs scored AUC 0.26 to 0.90).
FLAT_P_STD = 0.005


def _metrics_module():
    from morphtransfer import metrics

    return metrics


def _ensure_columns(preds: pd.DataFrame) -> pd.DataFrame:
    p = preds.copy()
    if "n_train_target" not in p.columns:
        p["n_train_target"] = np.where(p["experiment"].isin(LEVELS), 0, p["n_train"])
    if "truth" not in p.columns:
        p["truth"] = np.nan
    return p


def compute_metrics(
    preds: pd.DataFrame, p_threshold: float = 0.5, n_boot: int = 1000, seed: int = 0
) -> list[dict]:
    """One dict per (task, experiment, n_train_target, seed): metrics against the volunteers'
    robust labels with bootstrap intervals; against the simulator's truth where it exists; and
    the volunteers' own accuracy against the truth on the same test galaxies."""
    m = _metrics_module()
    preds = _ensure_columns(preds)
    rows = []
    for key, g in preds.groupby(GROUP, sort=True):
        y = g["label"].to_numpy().astype(int)
        p = g["p"].to_numpy().astype("float64")
        r = {k: (v.item() if hasattr(v, "item") else v) for k, v in zip(GROUP, key)}
        r["n_train"] = int(g["n_train"].iloc[0])
        r["n_test"] = int(len(g))
        r["n_pos"] = int(y.sum())
        r["p_std"] = float(np.std(p))
        r["flat"] = bool(r["p_std"] < FLAT_P_STD)
        # the model card's count of firing feature channels (None for runs before it was kept)
        act = g["active_feature_channels"].iloc[0] if "active_feature_channels" in g.columns else math.nan
        r["active_feature_channels"] = int(act) if np.isfinite(act) else None
        r["dead"] = r["active_feature_channels"] == 0
        ev = m.evaluate_predictions(y, p, p_threshold=p_threshold, n_boot=n_boot, seed=seed)
        r.update({k: _plain(v) for k, v in ev.items() if k not in ("n", "n_pos")})
        thr = g["p_threshold_val"].iloc[0] if "p_threshold_val" in g.columns else math.nan
        if np.isfinite(thr):
            bv = m.binary_metrics(y, p, p_threshold=float(thr))
            r["val_threshold"] = {k: _plain(bv[k]) for k in ("p_threshold", "tpr", "precision", "accuracy")}
        truth = g["truth"].to_numpy(dtype="float64")
        if np.isfinite(truth).all() and len(np.unique(truth)) == 2:
            t = truth.astype(int)
            bm = m.binary_metrics(t, p, p_threshold=p_threshold)
            r["truth"] = {
                "tpr": _plain(bm["tpr"]),
                "precision": _plain(bm["precision"]),
                "accuracy": _plain(bm["accuracy"]),
                "auc": _plain(m.roc_auc(t, p)),
                "n_pos": int(t.sum()),
                # how often the robust volunteer label itself is wrong: the volunteers' error
                "volunteer_accuracy": float(np.mean(t == y)),
            }
        rows.append(r)
    return rows


def _plain(v):
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    return v


def aggregate(per_seed: list[dict]) -> pd.DataFrame:
    """Mean and spread over seeds of every metric, per (task, experiment, n_train_target).

    ``<m>_std`` is the sample standard deviation over seeds (training-sample variability, and for
    0 and a the source model's retraining noise when there are several source seeds; 0 for one seed); ``<m>_lo``/``<m>_hi`` are the per-seed bootstrap 95% bounds averaged over seeds
    (test-sample uncertainty).
    """
    df = pd.json_normalize(per_seed, sep="_")
    out = []
    for key, g in df.groupby(["task", "experiment", "n_train_target"], sort=True):
        r = dict(zip(["task", "experiment", "n_train_target"], key))
        r["n_train"] = int(g["n_train"].iloc[0])
        r["n_test"] = int(g["n_test"].iloc[0])
        r["n_pos"] = int(g["n_pos"].iloc[0])
        r["n_seeds"] = int(len(g))
        r["n_flat"] = int(g["flat"].astype(bool).sum())
        r["n_dead"] = int(g["dead"].astype(bool).sum()) if "dead" in g else 0
        for mname in METRICS:
            vals = g[mname].to_numpy(dtype="float64")
            r[mname] = float(np.mean(vals))
            r[f"{mname}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            for b in ("lo", "hi"):
                col = f"{mname}_{b}"
                r[col] = float(np.mean(g[col].to_numpy(dtype="float64"))) if col in g else math.nan
        for mname in ("p_threshold", "tpr", "precision", "accuracy"):
            col = f"val_threshold_{mname}"
            vals = g[col].to_numpy(dtype="float64") if col in g else np.array([math.nan])
            r[col] = float(np.mean(vals))
            r[f"{col}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        for mname in ("tpr", "precision", "accuracy", "auc", "volunteer_accuracy"):
            col = f"truth_{mname}"
            r[col] = float(np.mean(g[col].to_numpy(dtype="float64"))) if col in g else math.nan
        out.append(r)
    res = pd.DataFrame(out)
    if len(res):
        order = {k: i for i, k in enumerate(EXPERIMENT_TITLES)}
        res = res.sort_values(
            ["task", "experiment", "n_train_target"],
            key=lambda s: s.map(order) if s.name == "experiment" else s,
            kind="stable",
        ).reset_index(drop=True)
    return res


def table2(agg: pd.DataFrame, main_n: dict[str, int]) -> pd.DataFrame:
    """The rows of Table 2: per task, 0, 0t (where run) and a, and b, c, d at the task's main
    target n_train."""
    keep = (agg["experiment"].isin(LEVELS)) | (
        agg.apply(lambda r: r["n_train_target"] == main_n.get(r["task"], -1), axis=1)
    )
    t = agg[keep].copy()
    t.insert(0, "question", t.pop("task"))
    t.insert(2, "description", t["experiment"].map(EXPERIMENT_TITLES))
    return t.drop(columns=["n_train_target"]).reset_index(drop=True)


def label_budget(agg: pd.DataFrame) -> pd.DataFrame:
    """Rows of the label-budget curves: b, c, d at every n_train, with the 0, 0t and a levels
    (``<metric>_level_0t`` is NaN where the run has no 0t)."""
    rows = agg[agg["experiment"].isin(["b", "c", "d"])].copy()
    levels = agg[agg["experiment"].isin(LEVELS)].set_index(["task", "experiment"])
    for lvl in LEVELS:
        for mname in METRICS:
            rows[f"{mname}_level_{lvl}"] = [
                levels[mname].get((t, lvl), math.nan) for t in rows["task"]
            ]
    return rows.reset_index(drop=True)


def n_to_reach_level(budget: pd.DataFrame, metric: str = "auc", tol: float = REACH_TOLERANCE,
                     level: str = "0") -> dict:
    """Smallest target n_train at which each of b, c, d reaches the (0) level (mean over seeds).

    ``level="0t"``: the level of the SDSS model on the SDSS images of the DES test galaxies, the
    same galaxies and labels b, c, d are scored on (tasks without it are left out)."""
    out: dict = {}
    for (task, exp), g in budget.groupby(["task", "experiment"], sort=True):
        g = g.sort_values("n_train_target")
        target = g[f"{metric}_level_{level}"].iloc[0]
        if not np.isfinite(target):
            continue
        hit = g[g[metric] >= target - tol]
        out.setdefault(task, {})[exp] = int(hit["n_train_target"].iloc[0]) if len(hit) else None
    return out


def findings(t2: pd.DataFrame, budget: pd.DataFrame | None = None) -> pd.DataFrame:
    """The study's qualitative claims, measured per question from Table 2 (and the sweep).

    - ``tpr_a_minus_0``, ``precision_a_minus_0``: what applying the SDSS model to DES as it is
      costs in completeness and purity at P_th (the study: (a) loses one or the other);
    - ``auc_b_minus_0``: how close fine-tuning gets to the SDSS level (the study: near it);
    - ``auc_a_minus_0t``, ``auc_b_minus_0t``: (a) and (b) against the SDSS model on the SDSS
      images of the same DES test galaxies (0t), where the run has it;
    - ``auc_b_minus_d`` (± the spreads over seeds added in quadrature) at the main N_train, and
      ``auc_b_minus_d_smallest_n`` at the smallest sweep N_train: what the SDSS start is worth;
    - ``d_skill_fraction`` = (AUC_d - 0.5) / (AUC_b - 0.5): the part of fine-tuning's skill above
      chance that training from scratch on the same galaxies reaches (the study: (d) fails
      most clearly for bars, i.e. the smallest fraction).
    """
    rows = []
    for q, g in t2.groupby("question", sort=True):
        by = {r["experiment"]: r for _, r in g.iterrows()}
        r = {"question": q}

        def d(a, b, m):
            return float(by[a][m] - by[b][m]) if a in by and b in by else math.nan

        r["tpr_a_minus_0"] = d("a", "0", "tpr")
        r["precision_a_minus_0"] = d("a", "0", "precision")
        r["auc_b_minus_0"] = d("b", "0", "auc")
        # the same two, on the DES test galaxies' own SDSS images (0t; NaN where not run): the
        # change of images alone, free of the difference between the two test samples
        r["auc_a_minus_0t"] = d("a", "0t", "auc")
        r["auc_b_minus_0t"] = d("b", "0t", "auc")
        r["auc_b_minus_d"] = d("b", "d", "auc")
        r["auc_b_minus_d_std"] = (
            float(math.hypot(by["b"]["auc_std"], by["d"]["auc_std"])) if "b" in by and "d" in by else math.nan
        )
        r["n_train_main"] = int(by["b"]["n_train"]) if "b" in by else 0
        # seeds of (d) at the main N_train whose model stayed flat (P barely varies): FLAT_P_STD
        r["d_flat_seeds"] = int(by["d"]["n_flat"]) if "d" in by else 0
        r["d_seeds"] = int(by["d"]["n_seeds"]) if "d" in by else 0
        r["d_dead_seeds"] = int(by["d"].get("n_dead", 0)) if "d" in by else 0
        r["d_skill_fraction"] = (
            float((by["d"]["auc"] - 0.5) / (by["b"]["auc"] - 0.5))
            if "b" in by and "d" in by and by["b"]["auc"] > 0.5 else math.nan
        )
        r["n_train_smallest"], r["auc_b_minus_d_smallest_n"], r["d_flat_seeds_smallest_n"] = 0, math.nan, 0
        if budget is not None and len(budget):
            bq = budget[budget["task"] == q]
            if len(bq):
                n0 = int(bq["n_train_target"].min())
                at = bq[bq["n_train_target"] == n0].set_index("experiment")
                # only below the main N (a sweep point that could not run, e.g. a one-class
                # sample, leaves the main N the smallest: saying it twice says nothing)
                if {"b", "d"} <= set(at.index) and n0 < r["n_train_main"]:
                    r["n_train_smallest"] = n0
                    r["auc_b_minus_d_smallest_n"] = float(at.loc["b", "auc"] - at.loc["d", "auc"])
                    r["d_flat_seeds_smallest_n"] = int(at.loc["d"].get("n_flat", 0))
        rows.append(r)
    return pd.DataFrame(rows)


def claims(found: pd.DataFrame, tol: float = REACH_TOLERANCE) -> dict:
    """The study's three claims as yes/no per question, from ``findings``: which questions show them.

    - ``a_loses``: (a) is at least ``tol`` below (0) in TPR or in precision at P_th;
    - ``b_near_0`` / ``b_near_0t``: (b) at the main N_train within ``tol`` AUC of (0) / of (0t)
      (None where the run has no (0t));
    - ``b_beats_d``: (b) above (d) in AUC at the smallest sweep N_train (the main N_train where the
      run has no sweep);
    - ``d_weakest``: the question whose (d) reaches the smallest part of (b)'s AUC above chance at
      the main N_train (``d_skill_fraction``), and ``largest_gap_small_n`` the one with the largest
      (b) - (d) at the smallest N: the study's "(b) beats (d) most clearly for bars" is both being
      Q3. ``d_flat``: questions whose (d) had flat seeds at the main or the smallest N_train, which
      make (d)'s AUC, and so both of these, a statement about training that stayed on the plateau.
    """
    def which(mask) -> list[str]:
        return sorted(found.loc[mask.fillna(False).astype(bool), "question"].tolist())

    if found is None or not len(found):
        return {}
    small = found["auc_b_minus_d_smallest_n"].where(found["n_train_smallest"] > 0, found["auc_b_minus_d"])
    out = {
        "tolerance": tol,
        "a_loses": which((found["tpr_a_minus_0"] <= -tol) | (found["precision_a_minus_0"] <= -tol)),
        "b_near_0": which(found["auc_b_minus_0"] >= -tol),
        "b_near_0t": which(found["auc_b_minus_0t"] >= -tol) if found["auc_b_minus_0t"].notna().any() else None,
        "b_beats_d": which(small > 0),
        "n_train_small": int(found["n_train_smallest"].max()) or int(found["n_train_main"].max()),
        "d_weakest": None,
        "largest_gap_small_n": None,
        "d_flat": which((found["d_flat_seeds"] > 0)
                        | (found.get("d_flat_seeds_smallest_n", pd.Series(0, index=found.index)) > 0)),
    }
    if found["d_skill_fraction"].notna().any():
        out["d_weakest"] = str(found.loc[found["d_skill_fraction"].idxmin(), "question"])
    if small.notna().any():
        out["largest_gap_small_n"] = str(found.loc[small.idxmax(), "question"])
    return out


def claims_lines(c: dict, questions: list[str]) -> list[str]:
    """``claims`` in words, one line per claim, for the end of a run and report.html."""
    if not c:
        return []

    def qs(v):
        return ", ".join(v) if v else "none"

    tol = c["tolerance"]
    near = f"(b) within {tol} AUC of (0): {qs(c['b_near_0'])}"
    if c.get("b_near_0t") is not None:
        near += f"; of (0t), the same galaxies: {qs(c['b_near_0t'])}"
    lines = [
        f"(a) loses >= {tol} of TPR or precision against (0): {qs(c['a_loses'])} "
        f"({len(c['a_loses'])} of {len(questions)})",
        near,
        f"(b) beats (d) in AUC at N={c['n_train_small']}: {qs(c['b_beats_d'])}",
    ]
    if c.get("d_weakest") is not None:
        s = f"(d) reaches the smallest part of (b)'s skill for {c['d_weakest']}"
        if c.get("largest_gap_small_n") is not None:
            s += f"; the largest (b) - (d) at N={c['n_train_small']} is {c['largest_gap_small_n']}'s"
        if c["d_flat"]:
            s += f" (flat (d) seeds in {qs(c['d_flat'])}: that (d) stayed on the loss plateau or died)"
        lines.append(s)
    return lines


# ---- writers ------------------------------------------------------------------------------


def _cell(r: pd.Series, m: str, with_ci: bool = True) -> str:
    v = r[m]
    if not np.isfinite(v):
        return "-"
    s = f"{v:.3f}"
    if r.get("n_seeds", 1) > 1:
        s += f" ± {r[f'{m}_std']:.3f}"
    if with_ci and np.isfinite(r.get(f"{m}_lo", math.nan)):
        s += f" [{r[f'{m}_lo']:.2f}, {r[f'{m}_hi']:.2f}]"
    return s


def _flat_phrase(t2: pd.DataFrame) -> str:
    """"Q3 (d) 2 of 2 seeds, ..." for the Table 2 rows with flat models; "" when none."""
    parts = [f"{r['question']} ({r['experiment']}) {int(r['n_flat'])} of {int(r['n_seeds'])} "
             f"seed{'s' if int(r['n_seeds']) > 1 else ''}"
             + (f" ({int(r['n_dead'])} dead)" if r.get("n_dead", 0) > 0 else "")
             for _, r in t2.iterrows() if r["n_flat"] > 0]
    return ", ".join(parts)


def _vcell(r: pd.Series, m: str) -> str:
    v, sd = r[f"val_threshold_{m}"], r[f"val_threshold_{m}_std"]
    if not np.isfinite(v):
        return "-"
    return f"{v:.3f}" + (f" ± {sd:.3f}" if r.get("n_seeds", 1) > 1 and np.isfinite(sd) else "")


LABELS_OWN = "robust volunteer labels of the test survey"
LABELS_SOURCE = ("robust volunteer labels of the SDSS (source) survey for every galaxy: the DES "
                 "galaxies carry the SDSS volunteers' label of the same galaxy, as in the study "
                 "([labels] target_votes = \"source\")")


def labels_phrase(cfg: dict | None) -> str:
    """Whose labels the table is scored against, from the run's [labels] target_votes."""
    return LABELS_SOURCE if (cfg or {}).get("labels", {}).get("target_votes") == "source" else LABELS_OWN


def model_cards(run_dir: str | os.PathLike) -> list[tuple[Path, dict]]:
    """(model folder, its card) of every model a run folder trained (models/<task>/<name>/)."""
    return [(card.parent, json.loads(card.read_text()))
            for card in sorted(Path(run_dir, "models").glob("*/*/card.json"))]


def training_precisions(cards: list[tuple[Path, dict]]) -> dict[str, int]:
    """{precision: number of models} of a run's model_cards (the precision each trained in on
    its machine: a preset's "auto" resolved)."""
    out: dict[str, int] = {}
    for _, card in cards:
        p = card.get("recipe", {}).get("precision")
        if p:
            out[p] = out.get(p, 0) + 1
    return out


def precision_phrase(counts: dict[str, int]) -> str:
    """How the run's models were trained, from their cards' precisions ({precision: models}): ""
    when no card says."""
    if not counts:
        return ""
    names = {"32-true": "float32", "bf16-mixed": "bf16-mixed", "16-mixed": "float16-mixed"}
    parts = [f"{names.get(p, p)} ({n} model{'s' if n != 1 else ''})" for p, n in sorted(counts.items())]
    return f" Training precision: {', '.join(parts)}."


def to_markdown(t2: pd.DataFrame, p_threshold: float = 0.5, labels: str = LABELS_OWN,
                trained_in: str = "") -> str:
    """Table 2 as Markdown with its notes; ``trained_in``: precision_phrase of the run's models."""
    head = "| Question | Exp. | Description | N_train | N_test | N_pos | TPR | Precision | Accuracy | AUC |"
    lines = [head, "|" + "---|" * 10]
    for _, r in t2.iterrows():
        lines.append(
            f"| {r['question']} | ({r['experiment']}) | {r['description']} | {r['n_train']} | "
            f"{r['n_test']} | {r['n_pos']} | {_cell(r, 'tpr')} | {_cell(r, 'precision')} | "
            f"{_cell(r, 'accuracy')} | {_cell(r, 'auc')} |"
        )
    lines.append("")
    lines.append(
        f"TPR, precision and accuracy at P_th = {p_threshold}, against {labels}. Value ± spread "
        "over seeds (different target training samples; for (0) and (a), different trainings of the SDSS model when the run has several source_seeds) "
        "[bootstrap 95% interval over test galaxies]. N_train: SDSS galaxies for (0) and (a), "
        f"DES galaxies for (b), (c), (d).{trained_in}"
    )
    flat = _flat_phrase(t2)
    if flat:
        lines.append("")
        lines.append(
            f"Flat models (P barely varies): {flat}. Their P varies by less than {FLAT_P_STD} "
            "over the test galaxies (standard deviation): the training was still on, or just "
            "leaving, the loss plateau at ln 2, so every galaxy falls on one side of P_th and "
            "their TPR, precision and accuracy only say which side; their AUC ranks by "
            "differences of ~1e-3 in P and may carry signal or noise. Longer training "
            "(min_steps) lets some from-scratch trainings leave the plateau; a fine-tuned one "
            "starts off it. A dead one (no channel of its last convolutional layer fires on its "
            "validation galaxies: active_feature_channels = 0 in its card) gives every galaxy "
            "the same P (AUC 0.5: every pair tied) and cannot be revived by more training."
        )
    if "val_threshold_tpr" in t2.columns and np.isfinite(t2["val_threshold_p_threshold"]).any():
        lines += [
            "",
            "At the threshold each model chose on its own validation galaxies (Youden's J; (0) and "
            "(a) share the SDSS model's, chosen on SDSS): the study notes P_th = 0.5 is not optimal "
            "for a model applied to another survey.",
            "",
            "| Question | Exp. | P_th (validation) | TPR | Precision | Accuracy |",
            "|" + "---|" * 6,
        ]
        for _, r in t2.iterrows():
            lines.append(
                f"| {r['question']} | ({r['experiment']}) | "
                + " | ".join(_vcell(r, m) for m in ("p_threshold", "tpr", "precision", "accuracy"))
                + " |"
            )
    if "truth_accuracy" in t2.columns and np.isfinite(t2["truth_accuracy"]).any():
        lines += [
            "",
            "Against the simulator's truth (same test galaxies): model vs truth, and the robust "
            "volunteer labels vs truth.",
            "",
            "| Question | Exp. | TPR (truth) | Precision (truth) | Accuracy (truth) | AUC (truth) | Volunteer accuracy |",
            "|" + "---|" * 7,
        ]
        for _, r in t2.iterrows():
            f = lambda c: f"{r[c]:.3f}" if np.isfinite(r[c]) else "-"  # noqa: E731
            lines.append(
                f"| {r['question']} | ({r['experiment']}) | {f('truth_tpr')} | "
                f"{f('truth_precision')} | {f('truth_accuracy')} | {f('truth_auc')} | "
                f"{f('truth_volunteer_accuracy')} |"
            )
    return "\n".join(lines) + "\n"


def budget_markdown(budget: pd.DataFrame, reach: dict | None = None, reach_0t: dict | None = None,
                    metric: str = "auc") -> str:
    """The label-budget sweep as a table (``label_budget.md``): per question, (b), (c), (d) at every
    DES N_train (mean ± spread over seeds, and how many seeds gave flat models), the levels they
    are measured against, and the smallest N_train at which each comes within REACH_TOLERANCE of
    (0) and of (0t). "" for a run without a sweep."""
    if budget is None or budget.empty:
        return ""
    ns = sorted(int(n) for n in budget["n_train_target"].unique())
    reach, reach_0t = reach or {}, reach_0t or {}
    has_0t = bool(reach_0t)
    head = ["Question", "Exp."] + [f"N = {n}" for n in ns] + ["reaches (0) at"]
    head += ["reaches (0t) at"] if has_0t else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def reached(d: dict, task: str, exp: str) -> str:
        if task not in d or exp not in d[task]:
            return "-"
        return "not reached" if d[task][exp] is None else str(d[task][exp])

    levels = []
    for task, g in budget.groupby("task", sort=True):
        lv = g.iloc[0]
        levels.append(f"{task} " + ", ".join(
            f"({name}) {lv[f'{metric}_level_{name}']:.3f}" for name in ("0", "0t", "a")
            if np.isfinite(lv.get(f"{metric}_level_{name}", math.nan))))
        for exp in ("b", "c", "d"):
            ge = g[g["experiment"] == exp].set_index("n_train_target")
            if ge.empty:
                continue
            cells = []
            for n in ns:
                if n not in ge.index:
                    cells.append("-")
                    continue
                r = ge.loc[n]
                c = _cell(r, metric, with_ci=False)
                if r["n_flat"] > 0:
                    c += f" ({int(r['n_flat'])} flat)"
                cells.append(c)
            row = [task, f"({exp})"] + cells + [reached(reach, task, exp)]
            row += [reached(reach_0t, task, exp)] if has_0t else []
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"{metric.upper()} of (b) fine-tuned, (c) dense layers only, (d) from scratch against the "
        "number of labelled DES galaxies N (mean ± spread over seeds; flat: seeds whose model's P "
        f"varies by less than {FLAT_P_STD} over the test galaxies). Levels: " + "; ".join(levels)
        + f". Reaches: the smallest N whose mean comes within {REACH_TOLERANCE} of that level.",
    ]
    return "\n".join(lines) + "\n"


def to_latex(t2: pd.DataFrame, p_threshold: float = 0.5) -> str:
    lines = [
        r"\begin{table}",
        r"\centering",
        r"\caption{Transfer from SDSS to DES (after Dominguez S\'anchez et al. 2019, Table 2): "
        rf"metrics at $P_{{\rm th}}={p_threshold}$, mean $\pm$ spread over seeds.}}",
        r"\begin{tabular}{llrrrcccc}",
        r"\hline",
        r"Question & Exp. & $N_{\rm train}$ & $N_{\rm test}$ & $N_{\rm pos}$ & TPR & Precision & Accuracy & AUC \\",
        r"\hline",
    ]
    for _, r in t2.iterrows():
        cells = []
        for m in ("tpr", "precision", "accuracy", "auc"):
            c = f"{r[m]:.3f}" if np.isfinite(r[m]) else "--"
            if r["n_seeds"] > 1 and np.isfinite(r[m]):
                c = f"${r[m]:.3f} \\pm {r[m + '_std']:.3f}$"
            cells.append(c)
        lines.append(
            f"{r['question']} & ({r['experiment']}) & {r['n_train']} & {r['n_test']} & "
            f"{r['n_pos']} & " + " & ".join(cells) + r" \\"
        )
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
