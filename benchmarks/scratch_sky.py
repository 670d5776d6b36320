"""Why do from-scratch (d) models stay flat? The same trainings on the target's images with and
without their sky pedestal, and on the source images of the same galaxies.

A finished study run folder (``morphtransfer run``) holds the simulated pair, the splits and the
SDSS models. For each task, DES N_train and seed this re-trains, with the run's own configuration
(or another preset's ``[recipe.target]``), on the very same training galaxies and labels:

- ``d_target``: (d) from scratch on the served DES images (what the run did);
- ``d_target_nosky``: (d) from scratch on the same DES images with each band's sky level (the
  median of the outer 6-pixel frame) subtracted, clipped at 0 and divided again by the band's
  maximum: the Legacy Survey composite's grey sky (legacypipe ``sdss_rgb`` softening ``m``, 32/255)
  removed and nothing else;
- ``d_source``: (d) from scratch on the SDSS images of the same galaxies (black sky);
- ``b_target`` and ``b_target_nosky``: (b), the run's SDSS model fine-tuned on the same galaxies,
  with and without the pedestal;

and scores each on the run's DES test galaxies (the same variant of the images it trained on;
``d_source`` on their SDSS images). Prints one JSON line: AUC and the standard deviation of P over
the test galaxies (below 0.005: "flat", on the ln 2 plateau) per training, and the training time.
The sky-subtracted copy of the DES Store is written once under ``--work``.

    python benchmarks/scratch_sky.py --run runs/quick [--tasks Q2 Q3] [--n 50 300] [--seeds 0 1]
                                     [--recipe paper] [--work runs/quick/scratch_sky]
                                     [--variants d_target b_target] [--max-epochs 40 --min-steps 0
                                     --patience 10] [--learning-rate 1e-4]

``--variants`` trains only those of the five; ``--max-epochs``, ``--min-steps`` and ``--patience``
override the recipe's budget (``[recipe.target]`` ``max_epochs``, ``min_steps``,
``early_stopping_patience``) for every training: how much of (b) - (d) is the length of the
training rather than the number of labels; ``--learning-rate`` overrides (d)'s rate
(``[recipe.target] learning_rate``): whether (d) stays flat at a rate the question's SDSS model
itself cannot leave the plateau at.

A diagnostic, not the study's method: the study trains on the images as each survey serves them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer import study, train
from morphtransfer.data.store import open_store
from morphtransfer.metrics import roc_auc
from morphtransfer.report.tables import FLAT_P_STD

from image_product_calibration import frame_pixels  # benchmarks/, beside this script


def sky_subtracted(images: np.ndarray) -> np.ndarray:
    """(n, bands, H, W) in [0, 1] -> each band minus its frame median, clipped at 0, / its max."""
    out = np.clip(images - np.median(frame_pixels(images), axis=2)[:, :, None, None], 0.0, None)
    out /= np.maximum(out.max(axis=(2, 3), keepdims=True), 1e-6)
    return out.astype(np.float32)


def nosky_copy(store_path: Path, out: Path) -> Path:
    """A copy of a Store whose images are ``sky_subtracted``; kept and reused when present."""
    import zarr

    done = out / "nosky.done"
    if done.exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(store_path, out)
    images = zarr.open_array(out / "images.zarr", mode="r+")
    for i in range(0, images.shape[0], 1024):
        images[i:i + 1024] = sky_subtracted(np.asarray(images[i:i + 1024], dtype=np.float32))
    done.write_text("sky subtracted\n")
    return out


VARIANTS = {"d_target": ("d", "target"), "d_target_nosky": ("d", "target_nosky"),
            "d_source": ("d", "source"), "b_target": ("b", "target"),
            "b_target_nosky": ("b", "target_nosky")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/quick", help="a finished study run on the simulated pair")
    ap.add_argument("--tasks", nargs="+", default=["Q2", "Q3"])
    ap.add_argument("--n", nargs="+", type=int, default=[50, 300])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--recipe", default=None,
                    help="take [recipe.target] from this preset (quick, paper or a TOML) instead of the run's")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="which trainings to run (default: all five)")
    ap.add_argument("--max-epochs", type=int, default=None, help="override [recipe.target] max_epochs")
    ap.add_argument("--min-steps", type=int, default=None, help="override [recipe.target] min_steps")
    ap.add_argument("--patience", type=int, default=None,
                    help="override [recipe.target] early_stopping_patience (0: none)")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="override [recipe.target] learning_rate, the from-scratch (d) trainings' rate "
                         "((b) keeps fine_tune_learning_rate)")
    ap.add_argument("--work", default=None, help="where the sky-subtracted Store and the models go "
                    "(default: RUN/scratch_sky)")
    args = ap.parse_args()

    run = Path(args.run)
    cfg = tomllib.loads((run / "config.toml").read_text())
    if args.recipe:
        cfg["recipe"]["target"] = study.load_config(args.recipe)["recipe"]["target"]
    budget = {k: v for k, v in (("max_epochs", args.max_epochs), ("min_steps", args.min_steps),
                                ("early_stopping_patience", args.patience),
                                ("learning_rate", args.learning_rate)) if v is not None}
    cfg["recipe"]["target"].update(budget)
    tag = Path(args.recipe or "run").stem + "".join(f"_{k}{v}" for k, v in budget.items())
    work = Path(args.work) if args.work else run / "scratch_sky"
    work.mkdir(parents=True, exist_ok=True)
    splits = pd.read_parquet(run / "splits.parquet")
    paths = study.run_store_paths(run, cfg)  # the Stores the run read
    stores = {k: open_store(v) for k, v in paths.items()}
    if any(v.endswith("nosky") for v in args.variants):
        stores["target_nosky"] = open_store(nosky_copy(paths["target"],
                                                       work / f"{paths['target'].name}_nosky"))
    split_seed = cfg["study"]["split_seed"]

    rows_out = []
    for task in args.tasks:
        for n in args.n:
            for seed in args.seeds:
                split = {name: study.experiment_rows(study.make_experiment(task, name, n_train=n, seed=seed),
                                                     splits, split_seed, study.target_sample(cfg, task))
                         for name in ("b", "d")}
                for name, variant in (VARIANTS[v] for v in args.variants):
                    own, _, test = split[name]
                    st = stores[variant]
                    fit_rows = study._labelled(st, own)
                    init = run / "models" / task / "source" if name == "b" else None
                    recipe = study.make_recipe(cfg, "target", len(fit_rows), seed, task, fine_tune=init is not None)
                    out = work / "models" / tag / f"{name}_{variant}_{task}_n{n}_s{seed}"
                    t0 = time.time()
                    train.train_model(st, task, rows=fit_rows, label_column="label", init=init,
                                      recipe=recipe, out=out, progress=False)
                    dt = time.time() - t0
                    card = json.loads((out / "card.json").read_text())
                    test_rows = study._labelled(st, test)
                    p = np.asarray(train.predict_store(out, st, rows=test_rows), dtype="float64")
                    rows_out.append({
                        "task": task, "n_train": n, "seed": seed, "experiment": f"{name}_{variant}",
                        "auc": round(float(roc_auc(test_rows["label"].to_numpy(), p)), 4),
                        "p_std": round(float(p.std()), 4), "flat": bool(p.std() < FLAT_P_STD),
                        "steps_min": recipe.min_steps, "epochs_max": recipe.max_epochs,
                        "epochs_run": card["epochs_run"], "best_epoch": card["best_epoch"],
                        "train_s": round(dt, 1),
                    })
    df = pd.DataFrame(rows_out)
    mean = df.groupby(["task", "n_train", "experiment"])["auc"].mean().round(4)
    print(json.dumps({
        "run": str(run), "recipe": args.recipe or "the run's", "budget": budget, "runs": rows_out,
        "mean_auc": {f"{t} n{n} {e}": v for (t, n, e), v in mean.items()},
        "flat": int(df["flat"].sum()), "trainings": len(df),
    }))


if __name__ == "__main__":
    main()
