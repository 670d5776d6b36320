"""Does bf16-mixed training change the study's rows? The same study in float32 and in bf16-mixed.

A finished study run folder (``morphtransfer run``) holds its Stores and configuration. This runs
the study again on the very same Stores, splits and labels twice, once with every training in
float32 and once in bf16-mixed, with several SDSS models (``[study] source_seeds``) and DES
samples (``[study] seeds``) so that each row has a spread to be judged against, and prints one
JSON line: per task, experiment and DES N_train, the AUC of every seed in each precision, their
means and standard deviations, and the difference of the means (bf16 - float32). Run folders are
kept under ``--work`` (a second call resumes them).

    python benchmarks/precision_study_check.py --run runs/quick [--tasks Q3] [--seeds 0 1 2 3]
                                               [--source-seeds 0 1 2 3] [--work runs/precision_check]

How to read it: a row whose difference is small beside its seed spread is not moved by the
precision; the (0) and (a) rows depend on the SDSS models alone, (b), (c), (d) on the DES
samples and, for (b) and (c), on the SDSS model they start from. Where bfloat16 is not native
the bf16 run is emulated and slow. Measured 2026-12-07 on the quick run's data (README,
"Precision"): quick.toml trains in "auto" (bf16-mixed where native) since.
"""

from __future__ import annotations

import argparse
import copy
import json
import tomllib
from pathlib import Path

import numpy as np
from rich.console import Console

from morphtransfer import study

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}


def check_config(cfg: dict, precision: str, tasks, seeds, source_seeds) -> dict:
    """The run's configuration with every training in ``precision`` and the given seeds."""
    out = copy.deepcopy(study.with_precision(cfg, precision))
    out.pop("inputs", None)  # run_study writes the [inputs] of the new folder itself
    out["name"] = f"{cfg.get('name', 'run')}_{precision}"
    out["study"]["tasks"] = list(tasks)
    out["study"]["seeds"] = list(seeds)
    out["study"]["source_seeds"] = list(source_seeds)
    return out


def per_seed_auc(metrics: dict) -> dict[tuple, dict[int, float]]:
    """{(task, experiment, DES n_train): {seed: AUC}} of a run's metrics.json."""
    rows: dict[tuple, dict[int, float]] = {}
    for r in metrics["per_seed"]:
        key = (r["task"], r["experiment"], int(r["n_train_target"]))
        rows.setdefault(key, {})[int(r["seed"])] = float(r["auc"])
    return rows


def compare(runs: dict[str, dict]) -> list[dict]:
    """Per row: AUC per seed, mean and spread in each precision, bf16 - float32 of the means."""
    a, b = per_seed_auc(runs["fp32"]), per_seed_auc(runs["bf16"])
    out = []
    for key in sorted(set(a) & set(b)):
        row = {"task": key[0], "experiment": key[1], "n_train_target": key[2]}
        for name, rows in (("fp32", a), ("bf16", b)):
            v = np.array([rows[key][s] for s in sorted(rows[key])])
            row[name] = {"auc": [round(x, 4) for x in v], "mean": round(float(v.mean()), 4),
                         "sd": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0}
        row["bf16_minus_fp32"] = round(row["bf16"]["mean"] - row["fp32"]["mean"], 4)
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished study run folder")
    ap.add_argument("--tasks", nargs="+", default=None, help="default: the run's tasks")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--source-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default=None, help="default: RUN/precision_check")
    args = ap.parse_args(argv)

    root = Path(args.run)
    cfg = tomllib.loads((root / "config.toml").read_text())
    stores = study.run_store_paths(root, cfg)
    if "source" not in stores or "target" not in stores:
        raise SystemExit(f"{root} has no source and target Stores in its [inputs]: nothing to transfer")
    tasks = args.tasks or cfg["study"]["tasks"]
    work = Path(args.work) if args.work else root / "precision_check"
    votes = cfg.get("labels", {}).get("target_votes")
    results, seconds = {}, {}
    for name, precision in PRECISIONS.items():
        run_cfg = check_config(cfg, precision, tasks, args.seeds, args.source_seeds)
        res = study.run_study(out=work / name, config=run_cfg, source=stores["source"],
                              target=stores["target"], target_votes=votes, progress=False,
                              console=Console(stderr=True))
        results[name] = json.loads((work / name / "metrics.json").read_text())
        seconds[name] = res.timings
    print(json.dumps({"run": str(root), "tasks": list(tasks), "seeds": args.seeds,
                      "source_seeds": args.source_seeds, "rows": compare(results),
                      "timings": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
