"""Can DS18 learn the simulated bars at all, given enough perfect labels?

The study's bar finding ("(b) beats (d) at small N_train, most clearly for bars") needs two things
of the simulated pair: bars that a network learns from thousands of SDSS examples but not from a
few hundred DES ones, and volunteer labels that say which galaxies have them. This separates the
first from the second: it trains DS18 on the simulator's *true* bar flags of face-on disks, so no
volunteer is involved.

1. Draws galaxies of the simulated population (seed ``--seed``) and keeps the face-on disks of
   the main sample (disk, inclination below ``--max-inclination``, r <= 17.77), and simulates
   them alone (``simulate(indices=...)``: the very images and votes a full simulation with this
   seed holds) in SDSS and DES, into two Stores under ``--work`` (kept and resumed).
2. Holds out ``--n-test`` of them (random) as the test set of both surveys, and
   ``--target-pool`` more as the DES training pool; the rest is the SDSS training pool.
3. Trains the SDSS model on the true bar flags of ``--source-n`` galaxies each (class-balanced
   sampling, the preset's ``[recipe.source]`` for Q3, ``--source-epochs`` to override its length)
   and scores it against the truth on the SDSS test galaxies and, unchanged, on their DES images
   ((a)). ``--source-labels volunteers`` trains it on the SDSS volunteers' robust bar labels
   instead (scored against the truth all the same).
4. From the largest SDSS model, on ``--target-n`` DES galaxies with true labels (half barred, as
   the presets' balanced bar sample), fine-tunes all layers ((b)), the dense part only ((c)) and
   trains from scratch ((d)) with the preset's ``[recipe.target]``, for ``--seeds``.

Prints one JSON line: AUC against the true bars per model, and of the largest SDSS model by the
bar's light fraction and length in input pixels (which bars it sees); and, as the floor a CNN
should beat, ``m2_linear_auc``: bar_signal.py's cross-validated logistic regression on the m = 2
Fourier features of the served r band, on the first 4,000 face-on disks of each Store. A diagnostic, not the
study's method (the study trains on volunteer labels).

    python benchmarks/bar_learning.py [--n-faceon 13000] [--n-test 1500] [--target-pool 1500]
        [--source-n 1000 3000 10000] [--source-lr LR] [--source-labels truth|volunteers]
        [--target-n 50 300] [--seeds 0 1]
        [--preset quick] [--target-preset PRESET]
        [--work runs/bar_learning]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer import study, train
from morphtransfer.data.store import IMAGE_SIZE, open_store
from morphtransfer.metrics import roc_auc
from morphtransfer.report.tables import FLAT_P_STD
from morphtransfer.simulate import simulate
from morphtransfer.simulate.population import MAG_MAIN_SAMPLE_LIMIT, draw_galaxy, galaxy_id
from morphtransfer.simulate.render import CUTOUT_R90

SURVEYS = ("sdss", "des")


def face_on_disks(seed: int, n: int, max_incl: float) -> list[int]:
    """Population indices of the first ``n`` face-on main-sample disks (about 9% of galaxies)."""
    out, index = [], 0
    while len(out) < n:
        g = draw_galaxy(seed, index)
        if g.disk and g.inclination_deg < max_incl and g.mag_r <= MAG_MAIN_SAMPLE_LIMIT:
            out.append(index)
        index += 1
    return out


def truth_rows(store, ids) -> pd.DataFrame:
    """The Store's catalogue rows of ``ids``, in that order, labelled with their true bar flag."""
    rows = study._labelled(store, pd.DataFrame({"id": ids, "label": 0}))
    return rows.assign(label=rows["true_bar"].astype("int64"))


def score(model, store, rows) -> tuple[float, float, np.ndarray]:
    p = np.asarray(train.predict_store(model, store, rows=rows), dtype="float64")
    return round(float(roc_auc(rows["label"].to_numpy(), p)), 4), round(float(p.std()), 4), p


def by_bin(rows: pd.DataFrame, p: np.ndarray, column: str, edges) -> dict:
    """AUC of barred galaxies in each bin of ``column`` against all unbarred test galaxies."""
    y = rows["label"].to_numpy()
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (y == 0) | ((rows[column] >= lo) & (rows[column] < hi)).to_numpy()
        if (y[m] == 1).sum() >= 10:
            out[f"{lo:g}-{hi:g}"] = {"n_bars": int((y[m] == 1).sum()),
                                     "auc": round(float(roc_auc(y[m], p[m])), 3)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-faceon", type=int, default=13000)
    ap.add_argument("--n-test", type=int, default=1500)
    ap.add_argument("--target-pool", type=int, default=1500,
                    help="DES galaxies the target samples are drawn from; the rest is the source pool")
    ap.add_argument("--source-n", nargs="+", type=int, default=[1000, 3000, 10000])
    ap.add_argument("--source-epochs", type=int, default=None)
    ap.add_argument("--source-lr", type=float, default=None,
                    help="learning rate of the SDSS models (default: the preset's)")
    ap.add_argument("--source-labels", choices=("truth", "volunteers"), default="truth",
                    help="train the SDSS models on the true bar flags or on the SDSS volunteers' "
                    "robust Q3 labels (the preset's [labels]; galaxies without one left out); "
                    "every model is still scored against the truth")
    ap.add_argument("--target-n", nargs="+", type=int, default=[50, 300])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--max-inclination", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=7, help="the simulated population's seed")
    ap.add_argument("--preset", default="quick", help="whose [recipe.source] / [recipe.target]")
    ap.add_argument("--target-preset", default=None,
                    help="take [recipe.target] from this preset instead (default: --preset)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="runs/bar_learning")
    a = ap.parse_args(argv)
    work = Path(a.work)
    cfg = study.load_config(a.preset)
    if a.source_epochs:
        cfg["recipe"]["source"]["max_epochs"] = a.source_epochs
    if a.source_lr:
        cfg["recipe"]["source"]["learning_rate"] = a.source_lr
    if a.target_preset:
        cfg["recipe"]["target"] = study.load_config(a.target_preset)["recipe"]["target"]
    tprefix = f"t{a.target_preset}_" if a.target_preset else ""

    t0 = time.time()
    indices = face_on_disks(a.seed, a.n_faceon, a.max_inclination)
    t1 = time.time()
    simulate(None, seed=a.seed, out=work / "data", workers=a.workers, surveys=SURVEYS,
             report=False, indices=indices)
    info = {"render_s": round(time.time() - t1, 1)}
    stores = {s: open_store(work / "data" / s) for s in SURVEYS}
    ids = np.asarray([galaxy_id(i) for i in indices])
    perm = np.random.default_rng([a.seed, 1]).permutation(ids.size)
    test_ids, pool_ids = ids[perm[:a.n_test]], ids[perm[a.n_test:]]
    tgt_pool, src_pool = pool_ids[: a.target_pool], pool_ids[a.target_pool:]
    tests = {s: truth_rows(stores[s], test_ids) for s in SURVEYS}
    src_rows = truth_rows(stores["sdss"], src_pool)
    if a.source_labels == "volunteers":
        vol = study.task_labels(src_rows, "Q3", cfg["labels"]).to_numpy()
        src_rows = src_rows.assign(label=vol)[vol >= 0].reset_index(drop=True)
    tgt_rows = truth_rows(stores["des"], tgt_pool)
    pool = tgt_rows.assign(task="Q3", role="target_pool", order=np.arange(len(tgt_rows)))
    for r in (*tests.values(), src_rows, tgt_rows):
        r["bar_length_px"] = r["true_bar_length_arcsec"] / (CUTOUT_R90 * r["r90_arcsec"]) * IMAGE_SIZE
    out = {"seed": a.seed, "n_faceon": len(indices), "bar_fraction": round(float(tests["sdss"]["label"].mean()), 3),
           "n_test": a.n_test, "n_test_bars": int(tests["sdss"]["label"].sum()),
           "source_pool": len(src_rows), "target_pool": len(tgt_rows), **info, "source": [], "target": []}
    # the floor a CNN should beat: a linear classifier of the served r band's m = 2 features
    from bar_signal import cv_auc, m2_features  # benchmarks/, beside this script

    out["m2_linear_auc"] = {}
    for s in SURVEYS:
        k = min(len(stores[s]), 4000)
        jr = list(stores[s].bands).index("r")
        feats = [m2_features(im[jr]) for im in stores[s].read_images(np.arange(k))]
        out["m2_linear_auc"][s] = cv_auc(feats, stores[s].catalog["true_bar"].to_numpy()[:k].astype(int), a.seed)
    models = work / "models" / a.preset
    biggest = None
    for n in a.source_n:
        if n > len(src_rows):
            out["source"].append({"n_train": n, "skipped": f"only {len(src_rows)} in the source pool"})
            continue
        fit = src_rows.iloc[np.sort(np.random.default_rng([a.seed, 3]).choice(len(src_rows), n, replace=False))]
        recipe = study.make_recipe(cfg, "source", n, 0, "Q3")
        folder = models / (f"source_n{n}_e{recipe.max_epochs}_lr{recipe.learning_rate:g}"
                           + ("_volunteers" if a.source_labels == "volunteers" else ""))
        t1 = time.time()
        train.train_model(stores["sdss"], "Q3", rows=fit.reset_index(drop=True), label_column="label",
                          recipe=recipe, out=folder, progress=False)
        row = {"n_train": n, "labels": a.source_labels, "n_bars": int(fit["label"].sum()),
               "n_true_bars": int(fit["true_bar"].sum()), "epochs_max": recipe.max_epochs,
               "train_s": round(time.time() - t1, 1)}
        row["auc_sdss"], row["p_std_sdss"], p = score(folder, stores["sdss"], tests["sdss"])
        row["auc_des_a"], row["p_std_des_a"], _ = score(folder, stores["des"], tests["des"])
        row["active_feature_channels"] = json.loads((folder / "card.json").read_text()).get(
            "active_feature_channels")
        log = pd.read_csv(folder / "log" / "metrics.csv") if (folder / "log" / "metrics.csv").exists() else None
        if log is not None and "val_loss" in log:
            row["val_loss_by_epoch"] = [round(float(v), 3) for v in log["val_loss"].dropna()]
        out["source"].append(row)
        biggest = (n, folder, p)
        print(json.dumps(row), flush=True)
    if biggest is not None:
        n, folder, p = biggest
        out["sdss_model_by_bar"] = {
            "n_train": n,
            "by_strength": by_bin(tests["sdss"], p, "true_bar_strength", (0.05, 0.1, 0.15, 0.2, 0.25, 0.35)),
            "by_length_px": by_bin(tests["sdss"], p, "bar_length_px", (0, 2, 3, 4, 5, 7, 12)),
        }
        for tn in a.target_n:
            for seed in a.seeds:
                # the presets' balanced bar sample: half barred, nested over N for one seed
                fit = study.target_train(pool, "Q3", tn, seed, a.seed, "balanced")
                for name, init, trainable in (("b", folder, "all"), ("c", folder, "head"), ("d", None, "all")):
                    recipe = study.make_recipe(cfg, "target", tn, seed, "Q3", fine_tune=init is not None)
                    tf = models / f"{tprefix}{name}_from{folder.name}_n{tn}_s{seed}"
                    t1 = time.time()
                    train.train_model(stores["des"], "Q3", rows=fit, label_column="label", init=init,
                                      trainable=trainable, recipe=recipe, out=tf, progress=False)
                    auc, pstd, _ = score(tf, stores["des"], tests["des"])
                    row = {"experiment": name, "n_train": tn, "seed": seed, "auc": auc, "p_std": pstd,
                           "flat": bool(pstd < FLAT_P_STD), "train_s": round(time.time() - t1, 1),
                           "active_feature_channels": json.loads((tf / "card.json").read_text()).get(
                               "active_feature_channels")}
                    out["target"].append(row)
                    print(json.dumps(row), flush=True)
        df = pd.DataFrame(out["target"])
        out["target_mean_auc"] = {f"{e} n{n}": round(float(v), 4)
                                  for (e, n), v in df.groupby(["experiment", "n_train"])["auc"].mean().items()}
    out["total_s"] = round(time.time() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
