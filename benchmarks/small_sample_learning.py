"""How much of a task a Store's labels teach DS18 from scratch with few examples: real or simulated.

    python benchmarks/small_sample_learning.py --store data/sdss_gz1 --task Q1 [--n 300 1000]
        [--seeds 0] [--n-test 800] [--epochs 40] [--patience 10] [--work runs/small_sample]

For each N: a seeded random draw of N robust galaxies of the Store (tasks.robust_labels, the
study's rule) trains DS18 from scratch (learning rate 1e-3, batch 30, the engine's augmentation,
early stopping on its 10% validation part after ``--patience`` flat epochs), and it is scored on
``--n-test`` other robust galaxies of the same Store, drawn once (seed 2019) and never trained on.
Prints one JSON line: AUC, the P spread over the test galaxies, epochs run and the best epoch per
training. Run it on a simulated Store and on a real one (e.g. the real SDSS cutouts of
``../shared/data/sdss_gz1``, ``benchmarks/real_data_check.py``) to compare how easy the simulated
galaxies are to learn from a few hundred labels (configs/README.md, "Training from scratch until it
converges").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from morphtransfer import train
from morphtransfer.data.store import open_store
from morphtransfer.metrics import roc_auc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--task", default="Q1")
    ap.add_argument("--n", nargs="+", type=int, default=[300])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n-test", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=10, help="0: no early stopping")
    ap.add_argument("--work", default="runs/small_sample")
    args = ap.parse_args()

    store = open_store(args.store)
    rows, _ = train.labelled_rows(store, args.task)
    if len(rows) < args.n_test + max(args.n):
        raise SystemExit(f"{args.store} has {len(rows)} robust {args.task} galaxies: fewer than "
                         f"--n-test {args.n_test} + N {max(args.n)}; lower one of them")
    perm = np.random.default_rng(2019).permutation(len(rows))
    test = rows.iloc[perm[:args.n_test]].reset_index(drop=True)
    pool = rows.iloc[perm[args.n_test:]].reset_index(drop=True)
    out = []
    for n in args.n:
        for seed in args.seeds:
            fit = pool.sample(n=n, random_state=seed).reset_index(drop=True)
            recipe = train.Recipe(learning_rate=1e-3, batch_size=30, max_epochs=args.epochs,
                                  early_stopping_patience=args.patience or None, seed=seed)
            folder = Path(args.work) / f"{Path(args.store).name}_{args.task}_n{n}_s{seed}_e{args.epochs}"
            t0 = time.time()
            train.train_model(store, args.task, rows=fit, label_column="label", recipe=recipe,
                              out=folder, progress=False)
            p = np.asarray(train.predict_store(folder, store, rows=test), dtype="float64")
            card = json.loads((folder / "card.json").read_text())
            out.append({"n_train": n, "seed": seed, "n_pos_train": int(fit["label"].sum()),
                        "auc": round(float(roc_auc(test["label"].to_numpy(), p)), 4),
                        "p_std": round(float(p.std()), 4), "epochs_run": card["epochs_run"],
                        "best_epoch": card["best_epoch"], "train_s": round(time.time() - t0, 1)})
    print(json.dumps({"benchmark": "small_sample_learning", "store": str(args.store),
                      "task": args.task, "n_robust": len(rows), "n_test": len(test),
                      "n_pos_test": int(test["label"].sum()), "epochs_max": args.epochs,
                      "patience": args.patience, "runs": out}))


if __name__ == "__main__":
    main()
