"""How many bars do the simulated volunteers see, against a real Galaxy Zoo 2 table?

Re-draws the votes of a simulated pair (``morphtransfer simulate`` or a study's ``data/`` folder)
from the visibilities its catalogues hold (``vis_arms``, ``vis_bar``, ``vis_axis_ratio``), with
the volunteers' bar thresholds changed (``--bar-vis50``, ``--bar-width``), without rendering
anything: each galaxy's votes come from its own volunteer random stream, so the stored
parameters reproduce the stored counts exactly (checked first), and a change of the bar question
(T03, drawn last) leaves Q1 and Q2 as they are.

For each setting and survey it prints one JSON line: robust barred of all galaxies; on the bar
question's path (``prerequisite_fraction`` 0.5: featured and not edge-on), the robust Q3 galaxies
as a share of all and the robust bars among them; of those robust on the path, how many are truly
barred and how many true bars the robust "not barred" hold; and the same figures of the real table
(``--gz2-table``, GZ2 Stripe 82 coadd in ``../shared/data``). And what the presets' robust Q3
labels (no path) are made of: the robust "not barred" share, how many of them are robustly
smooth (smooth > 0.7), how many robustly smooth galaxies reach 5 bar votes, and how well the
"featured" vote fraction (and, simulated, being a true face-on disk) ranks the robust bar label.

    python benchmarks/volunteer_calibration.py --stores runs/sim [--gz2-table T]
        [--bar-vis50 10.5 7 5] [--bar-width 0.4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.data.store import open_store
from morphtransfer.simulate.pipeline import revote
from morphtransfer.simulate.volunteers import VolunteerModel
from morphtransfer.tasks import QUESTIONS, robust_labels

Q = {t: QUESTIONS[n] for t, n in (("Q1", "smooth_or_featured"), ("Q2", "disk_edge_on"), ("Q3", "bar"))}


def bar_fractions(cat: pd.DataFrame, min_votes: int = 5) -> np.ndarray:
    """The "bar" vote fraction of every galaxy with at least ``min_votes`` votes in T03."""
    q = Q["Q3"]
    ok = cat[q.total_column].fillna(0) >= min_votes
    return cat.loc[ok, q.fraction_column("yes")].dropna().to_numpy(dtype="float64")


def rates(cat: pd.DataFrame, truth: bool = True, real: np.ndarray | None = None) -> dict:
    """Robust-bar rates of one catalogue (simulated or a GZ2 table in the adapter's columns);
    with ``real`` (a real table's bar fractions), the KS distance of the two distributions."""
    n = len(cat)
    f = bar_fractions(cat)
    any_q3 = robust_labels(cat, "Q3")
    path = robust_labels(cat, "Q3", prerequisite_fraction=0.5)
    on = path >= 0
    out = {
        "n": n,
        "robust_barred_of_all": round(float((any_q3 == 1).mean()), 4),
        "on_path_robust_of_all": round(float(on.mean()), 4),
        "on_path_barred": int((path == 1).sum()),
        "on_path_bar_fraction": round(float((path[on] == 1).mean()), 4) if on.any() else None,
        "bar_fraction_median": round(float(np.median(f)), 3),
        "bar_fraction_quartiles": [round(float(x), 3) for x in np.quantile(f, [0.25, 0.75])],
    }
    # What the robust labels of the presets (no path) are made of: ellipticals that enough
    # volunteers called "featured" reach T03 and become robust "not barred"
    q1 = Q["Q1"]
    robust = any_q3 >= 0
    smooth = cat[q1.fraction_column("smooth")].to_numpy(dtype="float64") > 0.7
    featured = cat[q1.fraction_column("featured_or_disk")].to_numpy(dtype="float64")
    n3 = cat[Q["Q3"].total_column].fillna(0).to_numpy()
    out.update({
        "robust_not_barred_of_all": round(float((any_q3 == 0).mean()), 4),
        "barred_of_robust": round(float((any_q3[robust] == 1).mean()), 4) if robust.any() else None,
        "not_barred_robustly_smooth": round(float(smooth[any_q3 == 0].mean()), 3) if (any_q3 == 0).any() else None,
        "smooth_with_5_bar_votes": round(float((n3[smooth] >= 5).mean()), 3) if smooth.any() else None,
        "smooth_featured_fraction_median": round(float(np.nanmedian(featured[smooth])), 3) if smooth.any() else None,
        "q1_votes_p10_p50_p90": [float(x) for x in np.nanpercentile(cat[q1.total_column], [10, 50, 90])],
    })
    labels = any_q3[robust] == 1
    if 0 < labels.sum() < labels.size:
        from sklearn.metrics import roc_auc_score

        out["featured_fraction_auc_for_bar_label"] = round(
            float(roc_auc_score(labels, np.nan_to_num(featured[robust]))), 3)
        if truth and {"true_disk", "true_edge_on"} <= set(cat.columns):
            face_on = cat["true_disk"].astype(bool) & ~cat["true_edge_on"].astype(bool)
            out["face_on_disk_auc_for_bar_label"] = round(
                float(roc_auc_score(labels, face_on.to_numpy()[robust])), 3)
    if real is not None:
        from scipy.stats import ks_2samp

        out["bar_fraction_ks_vs_table"] = round(float(ks_2samp(f, real).statistic), 3)
    if truth and "true_bar" in cat.columns:
        tb = cat["true_bar"].astype(bool)
        yes, no = (path == 1), (path == 0)
        out["on_path_barred_truly_barred"] = round(float(tb[yes].mean()), 3) if yes.any() else None
        out["on_path_not_barred_truly_barred"] = round(float(tb[no].mean()), 3) if no.any() else None
        out["true_bars_on_path_seen"] = round(float(yes[tb & on].mean()), 3) if (tb & on).any() else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", type=Path, required=True, help="folder with one simulated Store per survey")
    ap.add_argument("--surveys", nargs="+", default=["sdss", "des"])
    ap.add_argument("--gz2-table", type=Path, default=None)
    ap.add_argument("--bar-vis50", type=float, nargs="+", default=[])
    ap.add_argument("--bar-width", type=float, nargs="+", default=[])
    args = ap.parse_args(argv)

    if args.gz2_table is not None:
        from morphtransfer.data.catalogs import gz2

        real = gz2(args.gz2_table)
        real_f = bar_fractions(real)
        print(json.dumps({"table": str(args.gz2_table), **rates(real, truth=False)}), flush=True)
    else:
        real_f = None

    cats = {}
    for s in args.surveys:
        store = open_store(args.stores / s)
        meta = json.loads((args.stores / s / "store.json").read_text())["simulation"]
        model = VolunteerModel(**meta["volunteers"])
        cat = store.catalog.reset_index(drop=True)
        again = revote(cat, s, int(meta["seed"]), model)
        for q in Q.values():
            for a in q.answers:
                c = q.count_column(a)
                if not np.array_equal(again[c].to_numpy(), cat[c].to_numpy()):
                    sys.exit(f"{args.stores / s}: re-drawn {c} differs from the stored counts "
                             "(another simulator version?); nothing to calibrate against")
        cats[s] = (cat, int(meta["seed"]), model)
        print(json.dumps({"survey": s, "bar_vis50": model.bar_vis50, "bar_width": model.bar_width,
                          "stored": True, **rates(cat, real=real_f)}), flush=True)

    settings = [(v, w) for v in (args.bar_vis50 or [None]) for w in (args.bar_width or [None])]
    for v, w in settings:
        if v is None and w is None:
            continue
        for s, (cat, seed, model) in cats.items():
            m = dataclasses.replace(
                model, **({"bar_vis50": v} if v is not None else {}), **({"bar_width": w} if w is not None else {})
            )
            print(json.dumps({"survey": s, "bar_vis50": m.bar_vis50, "bar_width": m.bar_width,
                              **rates(revote(cat, s, seed, m), real=real_f)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
