"""The study's figures, each written next to the CSV table it was drawn from.

- roc.png (+ roc.csv): Figure 2 of the study, one panel per question, ROC curves of 0, a, b, c, d.
- label_budget.png (+ label_budget.csv): AUC and accuracy of b, c, d against the target N_train,
  with the (0) level (and a's) as horizontal lines.
- examples.png (+ examples.csv): Figure 1, the same galaxies seen by SDSS and by DES.
- false_positives_q3.png (+ false_positives_q3.csv): Figure 3, DES galaxies the fine-tuned model
  calls barred but the volunteers do not, with the simulator's truth when there is one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.errors import InputError
from morphtransfer.study import EXPERIMENT_TITLES, LEVELS

COLORS = {"0": "black", "0t": "0.55", "a": "tab:red", "b": "tab:blue", "c": "tab:green", "d": "tab:orange"}
STYLES = {"0": "-", "0t": "-", "a": "--", "b": "-", "c": "-.", "d": ":"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def main_rows(preds: pd.DataFrame, main_n: dict[str, int]) -> pd.DataFrame:
    """Predictions of the Table 2 rows: 0, 0t, a, and b, c, d at each task's main target n_train."""
    is_main = preds["experiment"].isin(LEVELS) | (
        preds["n_train_target"].to_numpy() == preds["task"].map(main_n).fillna(-1).to_numpy()
    )
    return preds[is_main]


def roc_figure(preds: pd.DataFrame, main_n: dict[str, int], agg: pd.DataFrame, out_dir: Path) -> Path:
    """Figure 2: per task, ROC of 0, a, b, c, d (b, c, d: first seed drawn, AUC mean ± spread)."""
    from morphtransfer import metrics

    plt = _plt()
    m = main_rows(preds, main_n)
    tasks = sorted(m["task"].unique())
    rows = []
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.3 * max(len(tasks), 1), 6.0), squeeze=False,
                             layout="constrained")
    for ax, task in zip(axes[0], tasks):
        for exp in EXPERIMENT_TITLES:
            g = m[(m["task"] == task) & (m["experiment"] == exp)]
            if g.empty:
                continue
            seeds = sorted(g["seed"].unique())
            for seed in seeds:
                gs = g[g["seed"] == seed]
                y = gs["label"].to_numpy().astype(int)
                if len(np.unique(y)) < 2:
                    continue
                fpr, tpr, thr = metrics.roc_curve(y, gs["p"].to_numpy())
                rows.append(pd.DataFrame({"task": task, "experiment": exp, "seed": seed,
                                          "fpr": fpr, "tpr": tpr, "threshold": thr}))
                if seed != seeds[0]:
                    continue
                a = agg[(agg["task"] == task) & (agg["experiment"] == exp)
                        & (agg["n_train_target"] == gs["n_train_target"].iloc[0])]
                label = f"({exp}) {EXPERIMENT_TITLES[exp]}"
                if len(a):
                    r = a.iloc[0]
                    label += f": AUC {r['auc']:.3f}"
                    if r["n_seeds"] > 1:
                        label += f"±{r['auc_std']:.3f}"
                ax.plot(fpr, tpr, STYLES[exp], color=COLORS[exp], lw=1.6, label=label)
        n = main_n.get(task)
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
               title=f"{task}" + (f" (DES N_train = {n})" if n else ""))
        # below the panel: six entries inside it would hide the curves' lower part
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=7, frameon=False)
    fig.suptitle("ROC curves: SDSS model on SDSS (0), on the DES test galaxies' SDSS images (0t), on DES (a), "
                 "fine-tuned (b, c), from scratch (d)", fontsize=10)
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["task", "experiment", "seed", "fpr", "tpr", "threshold"])
    table.to_csv(out_dir / "roc.csv", index=False)
    return _save(fig, out_dir / "roc.png")


def label_budget_figure(budget: pd.DataFrame, out_dir: Path) -> Path | None:
    """AUC and accuracy against DES N_train for b, c, d (mean ± spread), with the 0 and a levels."""
    budget.to_csv(out_dir / "label_budget.csv", index=False)
    if budget.empty:
        return None
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    tasks = sorted(budget["task"].unique())
    metrics_ = ("auc", "accuracy")
    fig, axes = plt.subplots(len(metrics_), len(tasks), figsize=(4.2 * len(tasks), 3.4 * len(metrics_)),
                             squeeze=False, layout="constrained")
    for j, task in enumerate(tasks):
        bt = budget[budget["task"] == task]
        for i, mname in enumerate(metrics_):
            ax = axes[i][j]
            for exp in ("b", "c", "d"):
                g = bt[bt["experiment"] == exp].sort_values("n_train_target")
                if g.empty:
                    continue
                ax.errorbar(g["n_train_target"], g[mname], yerr=g[f"{mname}_std"], marker="o", ms=4,
                            capsize=3, ls=STYLES[exp], color=COLORS[exp], label=f"({exp}) {EXPERIMENT_TITLES[exp]}")
                # points with flat models (P barely varies, tables.FLAT_P_STD): a ring around them
                flat = g[g["n_flat"] > 0]
                if len(flat):
                    ax.scatter(flat["n_train_target"], flat[mname], s=110, facecolors="none",
                               edgecolors=COLORS[exp], linewidths=1.2)
            for lvl in LEVELS:
                v = bt[f"{mname}_level_{lvl}"].iloc[0]
                if np.isfinite(v):
                    ax.axhline(v, color=COLORS[lvl], ls=STYLES[lvl], lw=1,
                               label=f"({lvl}) {EXPERIMENT_TITLES[lvl]}")
            ax.set_xscale("log")
            ns = sorted(bt["n_train_target"].unique())
            ax.set_xticks(ns)
            ax.set_xticklabels([str(n) for n in ns])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(xlabel="DES galaxies with labels (N_train)", ylabel=mname.upper() if mname == "auc" else mname,
                   title=f"{task}: {mname}")
            if i == 0 and j == 0:
                handles, labels = ax.get_legend_handles_labels()
                if (budget["n_flat"] > 0).any():
                    from matplotlib.lines import Line2D

                    handles.append(Line2D([], [], ls="none", marker="o", ms=10, mfc="none", mec="0.3"))
                    labels.append("ringed: some seeds flat (P barely varies)")
                ax.legend(handles, labels, fontsize=7, loc="lower right")
    fig.suptitle("How many DES labels does each approach need to reach the SDSS level (0)?", fontsize=10)
    return _save(fig, out_dir / "label_budget.png")


# Simulated galaxies fill the central ~20 pixels of the 69 x 69 input (cutouts of ~10 x R90):
# the figures show the central 35 x 35 so that arms and bars are visible at print size.
DISPLAY_CROP = 17


def _rgb(img: np.ndarray, crop: int = DISPLAY_CROP) -> np.ndarray:
    """g, r, i -> blue, green, red with an asinh stretch (each band is already max-normalised)."""
    x = np.clip(np.asarray(img, dtype="float64"), 0, None)
    if crop:
        x = x[:, crop:-crop, crop:-crop]
    rgb = np.stack([x[2], x[1], x[0]], axis=-1) if x.shape[0] >= 3 else np.repeat(x[:1].T, 3, -1)
    # a strong stretch: faint outer disks, arms and bars are what the eye must compare
    rgb = np.arcsinh(rgb / 0.02) / np.arcsinh(1 / 0.02)
    return np.clip(rgb, 0, 1)


def pick_examples(source_store, target_store, per_kind: int = 2, label_cfg: dict | None = None) -> pd.DataFrame:
    """Galaxies of both Stores with robust labels: smooth, disk, edge-on, barred (Figure 1)."""
    from morphtransfer.study import prepare_catalog, task_labels
    from morphtransfer.tasks import get_task

    cat = prepare_catalog((target_store or source_store).catalog)
    ids_other = set(source_store.catalog["id"].astype(str)) if target_store is not None else None
    kinds = [("smooth", "Q1", 0), ("disk", "Q1", 1), ("edge-on", "Q2", 1), ("barred", "Q3", 1)]
    rows = []
    used: set[str] = set()
    cfg_labels = label_cfg or {"rule": "fraction", "p_threshold": 0.7, "min_votes": 5}
    for kind, task, value in kinds:
        try:
            lab = task_labels(cat, task, cfg_labels).to_numpy()
        except InputError:  # a source without this question's votes
            continue
        cand = cat[lab == value]
        if ids_other is not None:
            cand = cand[cand["id"].astype(str).isin(ids_other)]
        # the most confident first: what a reader should recognise at a glance
        t = get_task(task)
        frac = cand[t.q.fraction_column(t.positive if value else t.negative)]
        cand = cand.assign(_f=frac.to_numpy()).sort_values("_f", ascending=False)
        for gid in cand["id"].astype(str):
            if gid in used:
                continue
            used.add(gid)
            rows.append({"id": gid, "kind": kind, "task": task, "label": value})
            if sum(r["kind"] == kind for r in rows) >= per_kind:
                break
    return pd.DataFrame(rows)


def examples_figure(source_store, target_store, out_dir: Path, per_kind: int = 2,
                    label_cfg: dict | None = None) -> Path | None:
    """Figure 1: the same galaxies in SDSS (top) and DES (bottom)."""
    ex = pick_examples(source_store, target_store, per_kind, label_cfg)
    if ex.empty:
        pd.DataFrame(columns=["id", "kind", "task", "label"]).to_csv(out_dir / "examples.csv", index=False)
        return None
    stores = [source_store] + ([target_store] if target_store is not None else [])
    truth_cols = ["true_disk", "true_edge_on", "true_bar"]
    cat = (target_store or source_store).catalog.set_index(cat_id := "id")
    for c in truth_cols:
        if c in cat.columns:
            ex[c] = cat.loc[ex["id"], c].to_numpy()
    ex.to_csv(out_dir / "examples.csv", index=False)
    plt = _plt()
    fig, axes = plt.subplots(len(stores), len(ex), figsize=(1.7 * len(ex), 1.85 * len(stores)), squeeze=False)
    for i, st in enumerate(stores):
        c = st.catalog
        idx = pd.Index(c[cat_id].astype(str)).get_indexer(ex["id"])
        imgs = st.read_images(c["image_index"].to_numpy()[idx])
        for j in range(len(ex)):
            ax = axes[i][j]
            ax.imshow(_rgb(imgs[j]), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{ex['kind'].iloc[j]}\n{ex['id'].iloc[j]}", fontsize=7)
            if j == 0:
                ax.set_ylabel((st.survey or f"store {i}").upper(), fontsize=9)
    fig.suptitle("The same galaxies seen by each survey (model inputs, central 35 x 35 of 69 x 69 pixels, g r i)", fontsize=9)
    return _save(fig, out_dir / "examples.png")


def false_positives_figure(preds: pd.DataFrame, main_n: dict[str, int], target_store, out_dir: Path,
                           p_threshold: float = 0.5, experiment: str = "b", max_show: int = 12) -> Path | None:
    """Figure 3: Q3 test galaxies the (b) model calls barred (p > P_th) but volunteers call unbarred."""
    m = main_rows(preds, main_n)
    g = m[(m["task"] == "Q3") & (m["experiment"] == experiment)]
    cols = ["id", "seed", "p", "label", "truth", "bar_yes_fraction", "bar_total_votes"]
    if g.empty or target_store is None:
        pd.DataFrame(columns=cols).to_csv(out_dir / "false_positives_q3.csv", index=False)
        return None
    g = g[g["seed"] == g["seed"].min()]
    fp = g[(g["p"] > p_threshold) & (g["label"] == 0)].sort_values("p", ascending=False)
    cat = target_store.catalog
    pos = pd.Index(cat["id"].astype(str)).get_indexer(fp["id"].astype(str))
    fp = fp.assign(
        bar_yes_fraction=cat["bar_yes_fraction"].to_numpy()[pos] if "bar_yes_fraction" in cat else np.nan,
        bar_total_votes=cat["bar_total_votes"].to_numpy()[pos] if "bar_total_votes" in cat else np.nan,
        image_index=cat["image_index"].to_numpy()[pos],
    )
    fp[cols].to_csv(out_dir / "false_positives_q3.csv", index=False)
    if fp.empty:
        return None
    show = fp.head(max_show)
    plt = _plt()
    ncol = min(6, len(show))
    nrow = int(np.ceil(len(show) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.9 * ncol, 2.2 * nrow), squeeze=False)
    imgs = target_store.read_images(show["image_index"].to_numpy())
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(show):
            ax.axis("off")
            continue
        r = show.iloc[k]
        ax.imshow(_rgb(imgs[k]), origin="lower")
        t = f"p={r['p']:.2f} votes {r['bar_yes_fraction']:.2f}"
        if np.isfinite(r["truth"]):
            t += "\ntruth: " + ("barred" if r["truth"] > 0.5 else "no bar")
        ax.set_title(t, fontsize=7, color="tab:green" if r["truth"] > 0.5 else "black")
    n_true = int((fp["truth"] > 0.5).sum()) if np.isfinite(fp["truth"]).all() else None
    sub = f"{len(fp)} false positives" + (
        f", {n_true} of them truly barred (volunteers missed the bar)" if n_true is not None else "")
    fig.suptitle(f"Q3: DES galaxies model ({experiment}) calls barred, volunteers do not - {sub}\n"
                 "(central 35 x 35 of the 69 x 69 model input; 'votes' = DES bar-yes fraction)", fontsize=9)
    return _save(fig, out_dir / "false_positives_q3.png")
