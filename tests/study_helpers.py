"""A tiny synthetic SDSS/DES Store pair for the study's tests (fast; no simulator needed).

Same galaxy ids in both Stores, Galaxy Zoo-like vote counts per survey (DES volunteers see
features more clearly than SDSS ones) and ``true_*`` truth columns, like the simulator's output.
Images carry a weak class signal so a one-epoch model is not pure noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.data.store import StoreWriter


def _votes(rng, truth_disk, truth_edge, truth_bar, n_votes, clarity):
    n = len(truth_disk)
    feat = rng.binomial(n_votes, np.where(truth_disk, clarity, 1 - clarity))
    smooth = n_votes - feat
    edge_yes = rng.binomial(feat, np.where(truth_edge, clarity, 1 - clarity))
    edge_no = feat - edge_yes
    bar_yes = rng.binomial(edge_no, np.where(truth_bar, clarity - 0.05, 0.05))
    bar_no = edge_no - bar_yes
    return pd.DataFrame(
        {
            "smooth_or_featured_smooth_count": smooth,
            "smooth_or_featured_featured_or_disk_count": feat,
            "smooth_or_featured_artifact_count": np.zeros(n, dtype=int),
            "disk_edge_on_yes_count": edge_yes,
            "disk_edge_on_no_count": edge_no,
            "bar_yes_count": bar_yes,
            "bar_no_count": bar_no,
        }
    )


def make_pair(root: Path, n: int = 400, seed: int = 0, positions: bool = False,
              target_id_prefix: str = "g") -> tuple[Path, Path]:
    """``positions``: ra/dec columns (the same sky positions in both Stores, to ~0.1");
    ``target_id_prefix``: another prefix names the target Store's galaxies differently, as two
    real surveys' catalogues do."""
    rng = np.random.default_rng(seed)
    disk = rng.random(n) < 0.55
    edge = disk & (rng.random(n) < 0.3)
    bar = disk & ~edge & (rng.random(n) < 0.4)
    sky_rng = np.random.default_rng([seed, 1])  # apart from rng: the votes and images stay as they were
    ra, dec = sky_rng.uniform(0, 20, n), sky_rng.uniform(-5, 5, n)
    paths = []
    for survey, n_votes, clarity, signal in (("sdss", 40, 0.88, 0.3), ("des", 20, 0.95, 0.6)):
        prefix = "g" if survey == "sdss" else target_id_prefix
        ids = [f"{prefix}{i:05d}" for i in range(n)]
        votes = _votes(rng, disk, edge, bar, n_votes, clarity)
        sky = pd.DataFrame({"ra": ra + sky_rng.normal(0, 0.1 / 3600, n),
                            "dec": dec + sky_rng.normal(0, 0.1 / 3600, n)}) if positions else None
        rows = pd.concat(
            [
                pd.DataFrame({"id": ids, "survey": survey}),
                sky,
                votes,
                pd.DataFrame({"true_disk": disk, "true_edge_on": edge, "true_bar": bar}),
            ],
            axis=1,
        )
        imgs = rng.random((n, 3, 69, 69), dtype=np.float32) * 0.2
        imgs[:, :, 30:39, 30:39] += (signal * disk[:, None, None, None]).astype(np.float32)
        imgs[:, 0, 33:36, 10:59] += (signal * (edge | bar)[:, None, None]).astype(np.float32)
        imgs /= imgs.max(axis=(2, 3), keepdims=True)
        w = StoreWriter(root / survey, survey=survey, bands=["g", "r", "i"])
        w.append(rows, imgs)
        paths.append(root / survey)
    return paths[0], paths[1]


def tiny_config(**over) -> dict:
    """A study configuration for tests: a few galaxies, one epoch, one or two seeds."""
    cfg = {
        "name": "test",
        "study": {"tasks": ["Q1", "Q2", "Q3"], "seeds": [0, 1], "split_seed": 7,
                  "p_threshold": 0.5, "n_boot": 50},
        "labels": {"rule": "fraction", "p_threshold": 0.7, "min_votes": 5},
        "source": {"n_train": {"Q1": 120, "Q2": 60, "Q3": 40}, "n_test": {"Q1": 60, "Q2": 30, "Q3": 20}},
        "target": {"n_train": {"Q1": 40, "Q2": 30, "Q3": 20}, "n_test": {"Q1": 60, "Q2": 30, "Q3": 20}},
        "sweep": {"n_train": [10, 20], "seeds": [0]},
        "recipe": {
            "source": {"max_epochs": 1, "augment": False, "early_stopping_patience": 0},
            "target": {"max_epochs": 1, "augment": False, "early_stopping_patience": 0},
        },
        "estimate": {},
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg
