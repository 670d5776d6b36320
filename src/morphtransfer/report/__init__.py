"""The study's report: metrics.json, table2.{md,csv,tex}, label_budget.md, figures/*.png with their
CSVs, report.html.

``write_report(run_dir)`` needs only the run folder (``predictions.parquet``, ``config.toml``) and,
for the image figures, the Stores; every number it writes is computed from ``predictions.parquet``.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.report.tables import (
    REACH_TOLERANCE,
    _ensure_columns,
    aggregate,
    budget_markdown,
    claims,
    compute_metrics,
    findings,
    label_budget,
    labels_phrase,
    model_cards,
    n_to_reach_level,
    precision_phrase,
    table2,
    training_precisions,
    to_latex,
    to_markdown,
)

__all__ = ["write_report", "compute_metrics", "aggregate", "table2", "main_n_from"]


def main_n_from(preds: pd.DataFrame, cfg: dict | None) -> dict[str, int]:
    """Each task's Table 2 target N_train: the configured one, capped at what was run."""
    from morphtransfer.study import _per_task

    out: dict[str, int] = {}
    tgt = preds[preds["experiment"].isin(["b", "c", "d"])]
    for task, g in tgt.groupby("task"):
        ns = sorted(g["n_train_target"].unique())
        want = _per_task(cfg["target"]["n_train"], task, "n_train") if cfg else max(ns)
        below = [n for n in ns if n <= want]
        out[task] = int(below[-1] if below else ns[0])
    return out


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def write_report(
    run_dir: str | os.PathLike,
    cfg: dict | None = None,
    source_store=None,
    target_store=None,
    notes: list[str] | None = None,
    console=None,
) -> dict:
    """Write every report file of a run folder; returns {name: path} of what was written."""
    run_dir = Path(run_dir)
    if cfg is None and (run_dir / "config.toml").exists():
        cfg = tomllib.loads((run_dir / "config.toml").read_text())
    study = (cfg or {}).get("study", {})
    p_threshold = float(study.get("p_threshold", 0.5))
    n_boot = int(study.get("n_boot", 1000))
    preds = _ensure_columns(pd.read_parquet(run_dir / "predictions.parquet"))
    notes = list(notes or [])

    per_seed = compute_metrics(preds, p_threshold=p_threshold, n_boot=n_boot, seed=0)
    agg = aggregate(per_seed)
    main_n = main_n_from(preds, cfg)
    t2 = table2(agg, main_n)
    budget = label_budget(agg)
    reach = n_to_reach_level(budget) if len(budget) else {}
    # against (0t), the DES test galaxies' own SDSS images: empty where the run has no (0t)
    reach_0t = n_to_reach_level(budget, level="0t") if len(budget) else {}
    found = findings(t2, budget)
    said = claims(found)

    written: dict[str, Path] = {}
    t2.to_csv(run_dir / "table2.csv", index=False)
    cards = model_cards(run_dir)
    trained_in = precision_phrase(training_precisions(cards))
    (run_dir / "table2.md").write_text(to_markdown(t2, p_threshold, labels_phrase(cfg), trained_in))
    (run_dir / "table2.tex").write_text(to_latex(t2, p_threshold))
    written.update({k: run_dir / f"table2.{k}" for k in ("md", "csv", "tex")})
    budget_md = budget_markdown(budget, reach, reach_0t)
    if budget_md:
        (run_dir / "label_budget.md").write_text(budget_md)
        written["label_budget.md"] = run_dir / "label_budget.md"

    metrics_doc = {
        "p_threshold": p_threshold,
        "n_boot": n_boot,
        "bootstrap_seed": 0,
        "main_n_train": main_n,
        "per_seed": per_seed,
        "table2": t2.to_dict(orient="records"),
        "label_budget": budget.to_dict(orient="records"),
        "n_train_to_reach_level_0": {
            "metric": "auc",
            "tolerance": REACH_TOLERANCE,
            "by_task": reach,
        },
        "n_train_to_reach_level_0t": {
            "metric": "auc",
            "tolerance": REACH_TOLERANCE,
            "by_task": reach_0t,
        },
        "findings": found.to_dict(orient="records"),
        "claims": said,
        "notes": notes,
    }
    (run_dir / "metrics.json").write_text(json.dumps(_json_safe(metrics_doc), indent=2))
    written["metrics.json"] = run_dir / "metrics.json"

    from morphtransfer.report import figures

    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figs = {
        "roc": figures.roc_figure(preds, main_n, agg, fig_dir),
        "label_budget": figures.label_budget_figure(budget, fig_dir),
    }
    if source_store is not None:
        figs["examples"] = figures.examples_figure(
            source_store, target_store, fig_dir, label_cfg=(cfg or {}).get("labels")
        )
    figs["false_positives_q3"] = figures.false_positives_figure(
        preds, main_n, target_store, fig_dir, p_threshold=p_threshold
    )
    for name, path in figs.items():
        if path is None:
            notes.append(f"figure {name} not drawn: no data for it in this run")
        else:
            written[f"figures/{name}.png"] = path

    from morphtransfer.report.html import write_html

    written["report.html"] = write_html(run_dir, cfg, t2, budget, reach, notes, figs, p_threshold,
                                       found, reach_0t, claims=said, trained_in=trained_in,
                                       cards=cards)
    return written
