"""Does bfloat16 mixed-precision *training* cost accuracy? Seed-matched fp32 vs bf16-mixed runs.

Trains Q1 on the same 1,500 robust SDSS galaxies with seeds 0, 1, 2 in each precision (5 epochs,
no early stopping), scores every model in fp32 on the same held-out robust galaxies, and prints
one JSON line with the AUCs, their means and spreads. The bar (issue 5): keep bf16 only where the
AUC stays within 0.005 of fp32.

    morphtransfer simulate --n 3000 --seed 0 --out data/mock3k
    python benchmarks/bf16_training_check.py --store data/mock3k/sdss
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

from morphtransfer.data.store import Store
from morphtransfer.metrics import roc_auc
from morphtransfer.tasks import robust_labels
from morphtransfer.train import Recipe, predict_store, train_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="data/mock3k/sdss")
    ap.add_argument("--task", default="Q1")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()

    store = Store(args.store)
    cat = store.catalog.copy()
    cat["label"] = robust_labels(cat, args.task).to_numpy()
    cat = cat[cat["label"] >= 0].sample(frac=1, random_state=0)
    train, test = cat.iloc[: args.n_train], cat.iloc[args.n_train :]
    auc: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("32-true", "bf16-mixed"):
            auc[precision] = []
            for seed in args.seeds:
                recipe = Recipe(max_epochs=args.epochs, early_stopping_patience=None, seed=seed,
                                precision=precision)
                model = train_model(store, args.task, rows=train, recipe=recipe,
                                    out=f"{tmp}/{precision}_{seed}", progress=False)
                # fp32 inference: only training differs
                p = predict_store(model, store, test, precision="32-true")
                auc[precision].append(float(roc_auc(test["label"].to_numpy(), p)))
    fp32, bf16 = np.array(auc["32-true"]), np.array(auc["bf16-mixed"])
    print(json.dumps({
        "benchmark": "bf16_training_check", "task": args.task, "n_train": len(train),
        "n_test": len(test), "epochs": args.epochs, "seeds": args.seeds, "auc": auc,
        "mean_auc_fp32": float(fp32.mean()), "mean_auc_bf16": float(bf16.mean()),
        "mean_auc_change": float(bf16.mean() - fp32.mean()),
        "max_seed_matched_change": float(np.abs(bf16 - fp32).max()),
        "spread_fp32": float(fp32.std()), "spread_bf16": float(bf16.std()),
    }))


if __name__ == "__main__":
    main()
