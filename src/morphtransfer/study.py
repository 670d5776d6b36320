"""The transfer study as data: experiments 0, a, b, c, d x tasks x seeds, the label-budget sweep,
the splits that keep every test galaxy out of every training set, and a resumable runner.

The design is Dominguez Sanchez et al. 2019 (MNRAS 484, 93), section 4 and Table 2:

    0  the source (SDSS) model tested on the source test set
    a  the source model applied as it is to the target (DES) test set
    b  fine-tune every layer of the source model on n target galaxies
    c  fine-tune the dense part only (convolutional layers frozen) on the same n
    d  train from scratch on the same n target galaxies

Labels for training and testing are robust volunteer labels (``tasks.robust_labels``). The target
galaxies' labels are the target survey's own votes by default, or with ``[labels] target_votes =
"source"`` the source survey's votes for the same galaxy, as in the study (its DES galaxies carry
Galaxy Zoo 2 labels made from SDSS images). Truth columns of simulated data (``true_*``) are never used for training
or testing; they are carried into the predictions for the report's "model error vs volunteer error"
figures only.

A run folder (``runs/<name>``) holds everything::

    config.toml                 the exact configuration of this run and the study engine version
                                (resume refuses a different one of either)
    splits.parquet              every galaxy's role per task: source_train/source_test/target_pool/target_test
    models/<task>/source/       the source model of each task (weights + card); source_s<k>/ for
                                more source seeds ([study] source_seeds)
    models/<task>/<b|c|d>_n<N>_s<seed>/
    experiments/<key>/predictions.parquet + done.json   one finished experiment (resume unit)
    predictions.parquet, metrics.json, table2.{md,csv,tex}, figures/, report.html

Python and the command are the same function: ``run_study(preset="quick", out="runs/quick")``.
"""

from __future__ import annotations

import json
import math
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape

from morphtransfer.errors import InputError
from morphtransfer.tasks import TASKS, add_fractions, get_task, robust_labels

PRESETS = ("quick", "paper")
# What a finished model or experiment of a run folder means: bump it when training, selection or
# prediction change what a model or prediction of the same configuration would be (a change to the
# report alone does not count: the report is recomputed from predictions.parquet every run). A
# run folder of another version is refused on resume, since finished steps are reused, not redone.
STUDY_ENGINE_VERSION = 2  # 2: early stopping waits for [recipe.target] min_steps

# What each experiment is, in the study's words (Table 2 of Dominguez Sanchez et al. 2019).
EXPERIMENT_TITLES = {
    "0": "SDSS model on SDSS",
    # not a row of the study: (0) on the very galaxies (and labels) that a-d are tested on, where
    # the source Store holds them (the simulated pair always does). (a) - (0t) is the change of
    # images alone; (b) - (0t) how near fine-tuning gets, free of the two test samples' difference
    "0t": "SDSS model on SDSS images of the DES test galaxies",
    "a": "SDSS model on DES, as it is",
    "b": "fine-tuned, all layers",
    "c": "fine-tuned, dense layers only",
    "d": "trained from scratch on DES",
}
TARGET_TRAINED = ("b", "c", "d")
# experiments that apply the source model as it is: levels for b, c, d to reach
LEVELS = ("0", "0t", "a")
ROLES = ("source_train", "source_test", "target_pool", "target_test")


class SplitOverlapError(AssertionError):
    """A galaxy is in both the training and the test set of an experiment: a bug, never data."""


# ---- configuration ------------------------------------------------------------------------


def preset_path(preset: str) -> Path:
    """A preset name (quick, paper) or the path of a TOML file written like them."""
    p = Path(preset)
    if p.suffix == ".toml":
        if not p.is_file():
            raise InputError(f"configuration file {p} does not exist")
        return p
    if preset not in PRESETS:
        raise InputError(
            f"unknown preset {preset!r}; use one of {', '.join(PRESETS)} or a path to a .toml file "
            "(copy src/morphtransfer/configs/quick.toml and edit it)"
        )
    return Path(str(resources.files("morphtransfer") / "configs" / f"{preset}.toml"))


def load_config(preset: str = "quick") -> dict:
    path = preset_path(preset)
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from exc
    for section in ("study", "source", "target", "recipe"):
        if section not in cfg:
            raise InputError(f"{path} lacks the [{section}] section; start from a shipped preset")
    cfg.setdefault("name", path.stem)
    cfg.setdefault("labels", {"rule": "fraction", "p_threshold": 0.7, "min_votes": 5})
    cfg.setdefault("sweep", {"n_train": [], "seeds": []})
    cfg.setdefault("estimate", {})
    return cfg


def _for_task(value, task: str | None, default=None):
    """A setting given once for every task or as a table per task (a task not named: default)."""
    return value.get(task, default) if isinstance(value, dict) else value


def _section_for_task(section: dict, task: str) -> dict:
    """A configuration section ([labels], [recipe.source], ...) as one task sees it: each table per
    task replaced by the task's value; a key whose table does not name the task is left out, so
    its default applies."""
    return {k: v[task] if isinstance(v, dict) else v for k, v in section.items()
            if not isinstance(v, dict) or task in v}


def _per_task(value, task: str, what: str) -> int:
    if isinstance(value, dict):
        if task not in value:
            raise InputError(f"configuration {what} has no entry for {task}")
        return int(value[task])
    return int(value)


def _to_toml(cfg: dict) -> str:
    """Minimal TOML writer for the configuration (tables, scalars, lists, inline dicts)."""

    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {type(v)} to TOML")

    lines: list[str] = []

    def table(prefix: str, d: dict):
        plain = {k: v for k, v in d.items() if not (isinstance(v, dict) and _is_table(v))}
        subs = {k: v for k, v in d.items() if isinstance(v, dict) and _is_table(v)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        for k, v in plain.items():
            lines.append(f"{k} = {scalar(v)}")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", cfg)
    return "\n".join(lines).lstrip() + "\n"


def _is_table(d: dict) -> bool:
    # inline dicts of per-task numbers (n_train = { Q1 = ..}) stay inline; sections are tables
    return not all(k in TASKS for k in d) or not d


# ---- experiments as data -------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One row of the study: which model is trained from what, on how many target galaxies.

    ``init``: "scratch", "source" (this task's source model) or a model folder.
    ``trainable``: "all", "head" (dense part only) or "none" (the model is applied as it is).
    ``test_on``: "source" (experiment 0: the source test set), "target" (the target test set) or
    "paired" (0t: the target test galaxies' images in the source Store).
    """

    task: str
    name: str  # "0", "0t", "a", "b", "c", "d"
    init: str
    trainable: str
    n_train: int  # target galaxies trained on (0 for experiments 0 and a)
    seed: int
    test_on: str
    # which source model (its training seed): 0 and a test it, b and c start from it
    source_seed: int = 0

    @property
    def trains(self) -> bool:
        return self.trainable != "none"

    @property
    def key(self) -> str:
        if not self.trains:
            # 0 and a: one row per source model; the first keeps the plain key
            return f"{self.task}/{self.name}" + (f"_s{self.seed}" if self.seed else "")
        return f"{self.task}/{self.name}_n{self.n_train}_s{self.seed}"

    @property
    def title(self) -> str:
        return EXPERIMENT_TITLES.get(self.name, self.name)


def make_experiment(task: str, name: str, n_train: int = 0, seed: int = 0,
                    source_seed: int = 0) -> Experiment:
    """One experiment. For 0 and a, ``seed`` is the source model's seed (``source_seed`` is
    ignored); b and c start from the source model of ``source_seed``."""
    if name == "0":
        return Experiment(task, "0", "source", "none", 0, int(seed), "source", int(seed))
    if name == "0t":
        return Experiment(task, "0t", "source", "none", 0, int(seed), "paired", int(seed))
    if name == "a":
        return Experiment(task, "a", "source", "none", 0, int(seed), "target", int(seed))
    if name == "b":
        return Experiment(task, "b", "source", "all", int(n_train), int(seed), "target", int(source_seed))
    if name == "c":
        return Experiment(task, "c", "source", "head", int(n_train), int(seed), "target", int(source_seed))
    if name == "d":
        return Experiment(task, "d", "scratch", "all", int(n_train), int(seed), "target")
    raise InputError(f"unknown experiment {name!r}; the study has 0, 0t, a, b, c, d")


def plan_experiments(
    cfg: dict, tasks: list[str], with_target: bool = True, pool_sizes: dict | None = None,
    paired: bool = False,
) -> tuple[list[Experiment], list[str]]:
    """The study's experiment list (and notes on what was capped or skipped).

    Main rows (Table 2): 0 and a once per source model (``[study] source_seeds``, default one);
    b, c, d at the target n_train for every seed. Sweep: b, c, d at every sweep n_train for the
    sweep seeds (rows shared with the main ones are not repeated). With several source models,
    b and c of seed s start from source model ``source_seeds[s % len(source_seeds)]``, so their
    spread over seeds includes the source model's own training noise.
    ``pool_sizes[task]`` caps n_train at the robust target galaxies available.
    ``paired``: the source Store holds every target test galaxy (same id, or a galaxy within
    ``MATCH_RADIUS_ARCSEC`` of its position), so 0t is run too.
    """
    notes: list[str] = []
    out: list[Experiment] = []
    seen: set[str] = set()

    def add(e: Experiment):
        if e.key not in seen:
            seen.add(e.key)
            out.append(e)

    src_seeds = source_seeds(cfg)

    def target_exp(task, name, n, seed):
        return make_experiment(task, name, n, seed, src_seeds[int(seed) % len(src_seeds)])

    for task in tasks:
        for s in src_seeds:
            add(make_experiment(task, "0", seed=s))
        if not with_target:
            continue
        for s in src_seeds:
            add(make_experiment(task, "a", seed=s))
        if paired:
            for s in src_seeds:
                add(make_experiment(task, "0t", seed=s))
        pool = None if pool_sizes is None else int(pool_sizes[task])
        n_main = _per_task(cfg["target"]["n_train"], task, "[target] n_train")
        if pool is not None and n_main > pool:
            notes.append(
                f"{task}: only {pool} robust target galaxies are left for training after the test "
                f"set; Table 2 uses n_train={pool} instead of {n_main}"
            )
            n_main = pool
        if n_main < 2:
            notes.append(f"{task}: too few robust target galaxies to fine-tune; b, c, d skipped")
            continue
        for seed in cfg["study"]["seeds"]:
            for name in TARGET_TRAINED:
                add(target_exp(task, name, n_main, seed))
        for n in cfg["sweep"].get("n_train", []):
            if pool is not None and n > pool:
                notes.append(f"{task}: sweep point n_train={n} skipped (only {pool} in the pool)")
                continue
            for seed in cfg["sweep"].get("seeds", []):
                for name in TARGET_TRAINED:
                    add(target_exp(task, name, n, seed))
    balanced = [t for t in tasks if with_target and target_sample(cfg, t) == "balanced"]
    if balanced:
        notes.append(
            f"{', '.join(balanced)}: the target training samples of (b), (c), (d) are class-balanced "
            "([target] sample): half of N_train positive where the pool allows; the test sets are "
            "random, so every metric is the population's"
        )
    return out, notes


def source_seeds(cfg: dict) -> list[int]:
    """The seeds of the source models (``[study] source_seeds``; default one model, seed 0).

    One source model gives Table 2's (0) and (a) rows no spread, although retraining it moves
    them most (a bar model trained on ~170 bars changes its AUC by ~0.1 between runs): several
    source seeds measure that, at the price of one source training each.
    """
    seeds = cfg["study"].get("source_seeds", [0])
    if isinstance(seeds, int) or not len(seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"[study] source_seeds must be a list of distinct seeds, got {seeds!r}")
    return [int(s) for s in seeds]


def main_n_train(cfg: dict, task: str, pool_size: int | None = None) -> int:
    n = _per_task(cfg["target"]["n_train"], task, "[target] n_train")
    return n if pool_size is None else min(n, int(pool_size))


# ---- splits --------------------------------------------------------------------------------


def prepare_catalog(catalog: pd.DataFrame) -> pd.DataFrame:
    """Vote fractions filled from counts where the catalogue has counts."""
    if any(c.endswith("_count") for c in catalog.columns):
        return add_fractions(catalog)
    return catalog


def task_labels(catalog: pd.DataFrame, task: str, label_cfg: dict) -> pd.Series:
    """Robust labels 1/0/-1 of one task (raises InputError when the votes are missing). Each
    ``[labels]`` setting is one value or a table per task (a task not named: the default)."""
    label_cfg = _section_for_task(label_cfg, task)
    return robust_labels(
        catalog,
        task,
        rule=label_cfg.get("rule", "fraction"),
        p_threshold=float(label_cfg.get("p_threshold", 0.7)),
        min_votes=int(label_cfg.get("min_votes", 5)),
        prerequisite_fraction=float(label_cfg.get("prerequisite_fraction", 0.0)),
    )


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def make_splits(
    source_catalog: pd.DataFrame,
    target_catalog: pd.DataFrame | None,
    task: str,
    cfg: dict,
) -> pd.DataFrame:
    """Every robust galaxy's role for one task: id, survey ("source"/"target"), role, label, order.

    Test sets are drawn first (target, then source), so they never shrink when training sizes
    grow. The source training set excludes both test sets (the same galaxy seen by both
    surveys is the same galaxy: a model fine-tuned from the source model has seen its source
    training set; "the same" is the same id or, when both catalogues have ra/dec, a position
    within 1 arcsec). The target pool (what b, c, d draw from) excludes the target test set.
    ``order`` is the galaxy's position in the pool's shuffled order for seed 0 (see ``target_train``).
    """
    tidx = list(TASKS).index(task) if task in TASKS else 0
    split_seed = int(cfg["study"].get("split_seed", 0))
    src = prepare_catalog(source_catalog)
    src_lab = task_labels(src, task, cfg.get("labels", {}))
    src_ids = src["id"].astype(str).to_numpy()
    src_rob = src_lab.to_numpy() >= 0

    frames = []
    taken_test: set[str] = set()
    if target_catalog is not None:
        tgt = prepare_catalog(target_catalog)
        tgt_ids = tgt["id"].astype(str).to_numpy()
        tgt_lab = target_labels(tgt, src, src_lab, task, cfg)
        rob = np.flatnonzero(tgt_lab >= 0)
        perm = rob[_rng(split_seed, tidx, 1).permutation(len(rob))]
        n_test = _per_task(cfg["target"]["n_test"], task, "[target] n_test")
        # never let the test set eat the pool: keep at least the main n_train for training
        n_main = _per_task(cfg["target"]["n_train"], task, "[target] n_train")
        n_test = min(n_test, max(len(perm) - n_main, len(perm) // 2))
        test, pool = perm[:n_test], perm[n_test:]
        taken_test |= set(tgt_ids[test])
        frames.append(_role_frame(tgt_ids[test], tgt_lab[test], "target", "target_test"))
        frames.append(_role_frame(tgt_ids[pool], tgt_lab[pool], "target", "target_pool"))

    rob = np.flatnonzero(src_rob)
    perm = rob[_rng(split_seed, tidx, 2).permutation(len(rob))]
    src_lab_np = src_lab.to_numpy()
    n_test = _per_task(cfg["source"]["n_test"], task, "[source] n_test")
    n_train = _per_task(cfg["source"]["n_train"], task, "[source] n_train")
    n_test = min(n_test, len(perm) // 3) if len(perm) < n_test + n_train else n_test
    test = perm[:n_test]
    rest = perm[n_test:]
    rest = rest[~np.isin(src_ids[rest], list(taken_test))]
    if target_catalog is not None and taken_test:
        # two real Stores name the same galaxy differently: match positions too
        near = _within(src.iloc[rest], target_catalog[target_catalog["id"].astype(str).isin(taken_test)])
        rest = rest[~near]
    train = rest[:n_train]
    frames.append(_role_frame(src_ids[test], src_lab_np[test], "source", "source_test"))
    frames.append(_role_frame(src_ids[train], src_lab_np[train], "source", "source_train"))
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "task", task)
    return out


MATCH_RADIUS_ARCSEC = 1.0  # SDSS and DES astrometry agree to ~0.1"; galaxies are > 3" apart

TARGET_VOTES = ("target", "source")


def target_votes(cfg: dict) -> str:
    """Whose volunteers label the target galaxies: ``[labels] target_votes``.

    "target": the target survey's own votes (a team labelling its new survey). "source": the
    source survey's votes for the same galaxy, as in Dominguez Sanchez et al. 2019, whose DES
    galaxies carry Galaxy Zoo 2 labels made from SDSS images; a target galaxy without a source
    counterpart (same id, or within 1 arcsec) then has no label. Unset, it means "target" here;
    ``run_study`` fills it in first (``resolve_target_votes``).
    """
    v = str(cfg.get("labels", {}).get("target_votes", "target"))
    if v not in TARGET_VOTES:
        raise InputError(f"[labels] target_votes = {v!r} unknown; use one of {TARGET_VOTES}")
    return v


def resolve_target_votes(cfg: dict, simulated: bool, override: str | None = None) -> dict:
    """``cfg`` with ``[labels] target_votes`` set: ``override`` (``--target-votes``), else the
    preset's value, else the default for the data.

    The built-in simulated pair follows the study: DES galaxies take the SDSS volunteers'
    label of the same galaxy ("source"; every simulated galaxy is in both surveys). Users'
    own ``--source/--target`` Stores default to the target survey's own votes ("target"):
    their galaxies need not overlap, and a survey team usually labels its new survey itself.
    The resolved value is written into the run's config.toml and named in the report.
    ``cfg`` itself is left as it was.
    """
    labels = dict(cfg.get("labels", {}))
    if override is not None:
        labels["target_votes"] = override
    labels.setdefault("target_votes", "source" if simulated else "target")
    out = {**cfg, "labels": labels}
    target_votes(out)  # an unknown value is refused before anything is written
    return out


def target_labels(tgt: pd.DataFrame, src: pd.DataFrame, src_lab: pd.Series, task: str, cfg: dict) -> np.ndarray:
    """Robust labels 1/0/-1 of the target galaxies, from whose votes ``target_votes`` says."""
    if target_votes(cfg) == "source":
        return _source_labels_for(tgt, src, src_lab.to_numpy())
    return task_labels(tgt, task, cfg.get("labels", {})).to_numpy()


def _source_labels_for(tgt: pd.DataFrame, src: pd.DataFrame, src_lab: np.ndarray) -> np.ndarray:
    """The source survey's robust label of each target galaxy (-1 where it has none)."""
    j = _source_index(tgt, src)
    out = np.full(len(j), -1, dtype="int8")
    out[j >= 0] = np.asarray(src_lab)[j[j >= 0]]
    return out


def _source_index(rows: pd.DataFrame, src: pd.DataFrame) -> np.ndarray:
    """Position in ``src`` of each row's galaxy: the same id, else (two real Stores name the same
    galaxy differently) the source galaxy within ``MATCH_RADIUS_ARCSEC`` of its position; -1
    where neither finds one."""
    by_id = pd.Series(np.arange(len(src)), index=pd.Index(src["id"].astype(str)))  # Store ids are unique
    j = by_id.reindex(rows["id"].astype(str)).fillna(-1).to_numpy(dtype="int64")
    unmatched = np.flatnonzero(j < 0)
    if len(unmatched):
        j[unmatched] = _nearest_within(rows.iloc[unmatched], src)
    return j


def _nearest_within(rows: pd.DataFrame, others: pd.DataFrame,
                    radius_arcsec: float = MATCH_RADIUS_ARCSEC) -> np.ndarray:
    """Position in ``others`` of each row's nearest galaxy within ``radius_arcsec``, else -1
    (all -1 without ra/dec columns; rows or others with non-finite positions never match)."""
    out = np.full(len(rows), -1, dtype="int64")
    if len(rows) == 0 or len(others) == 0 or not {"ra", "dec"} <= set(rows.columns) & set(others.columns):
        return out
    ra1, dec1 = rows["ra"].to_numpy(dtype="float64"), rows["dec"].to_numpy(dtype="float64")
    ra2, dec2 = others["ra"].to_numpy(dtype="float64"), others["dec"].to_numpy(dtype="float64")
    ok1 = np.flatnonzero(np.isfinite(ra1) & np.isfinite(dec1))
    ok2 = np.flatnonzero(np.isfinite(ra2) & np.isfinite(dec2))
    if not len(ok1) or not len(ok2):
        return out
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    c1 = SkyCoord(ra1[ok1] * u.deg, dec1[ok1] * u.deg)
    c2 = SkyCoord(ra2[ok2] * u.deg, dec2[ok2] * u.deg)
    j, sep, _ = c1.match_to_catalog_sky(c2)
    near = sep.arcsec < radius_arcsec
    out[ok1[near]] = ok2[j[near]]
    return out


def _within(rows: pd.DataFrame, others: pd.DataFrame, radius_arcsec: float = MATCH_RADIUS_ARCSEC) -> np.ndarray:
    """Which of ``rows`` lie within ``radius_arcsec`` of any of ``others`` (False without ra/dec)."""
    return _nearest_within(rows, others, radius_arcsec) >= 0


def paired_source_ids(target_ids, target_catalog: pd.DataFrame, source_catalog: pd.DataFrame) -> np.ndarray:
    """The source Store's id of each target galaxy (``_source_index``: same id, else within
    ``MATCH_RADIUS_ARCSEC`` of its position in ``target_catalog``); "" where neither finds one."""
    ids = pd.Index(pd.Series(target_ids).astype(str), name="id")
    rows = (target_catalog.assign(id=target_catalog["id"].astype(str)).drop_duplicates("id")
            .set_index("id").reindex(ids).reset_index())
    j = _source_index(rows, source_catalog)
    out = np.full(len(j), "", dtype=object)
    out[j >= 0] = source_catalog["id"].astype(str).to_numpy(dtype=object)[j[j >= 0]]
    return out.astype(str)


def _role_frame(ids, labels, survey, role) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series(ids, dtype="string"),
            "survey": survey,
            "role": role,
            "label": np.asarray(labels, dtype="int8"),
            "order": np.arange(len(ids), dtype="int64"),
        }
    )


TARGET_SAMPLES = ("random", "balanced")


def target_sample(cfg: dict, task: str) -> str:
    """How the labelled target sample of ``task`` is drawn: ``[target] sample``.

    "random" (default): N galaxies drawn at random from the labelled pool, so the sample holds
    the population's share of the class (~10% bars on the simulated pair: 300 random DES galaxies
    hold ~30). "balanced":
    half of the N from each class where the pool allows (the rest from the other class) - a
    team that labels candidates of a rare class rather than a random draw. The
    test set is drawn at random either way, so every metric is the population's. One value for
    every task, or a table per task (``{ Q1 = "random", Q3 = "balanced" }``; a task not named
    is "random").
    """
    v = str(_for_task(cfg.get("target", {}).get("sample", "random"), task, "random"))
    if v not in TARGET_SAMPLES:
        raise InputError(f"[target] sample = {v!r} for {task} unknown; use one of {TARGET_SAMPLES}")
    return v


def target_train(
    splits: pd.DataFrame, task: str, n_train: int, seed: int, split_seed: int, sample: str = "random"
) -> pd.DataFrame:
    """The n_train target galaxies of one seed: the first n of that seed's shuffle of the pool.

    Nested: for one seed, the 100-galaxy sample contains the 50-galaxy one, so the label-budget
    curve measures more labels, not different labels. Different seeds draw different samples.
    ``sample="balanced"``: the first ceil(n/2) positives and the first n - that negatives of
    the same shuffle (fewer positives in the pool: all of them, the rest negatives); still nested.
    """
    tidx = list(TASKS).index(task) if task in TASKS else 0
    pool = splits[(splits["task"] == task) & (splits["role"] == "target_pool")]
    pool = pool.sort_values("order", kind="stable").reset_index(drop=True)
    perm = _rng(split_seed, tidx, 3, seed).permutation(len(pool))
    n = int(n_train)
    if sample == "random":
        return pool.iloc[perm[:n]].reset_index(drop=True)
    if sample != "balanced":
        raise InputError(f"target sample {sample!r} unknown; use one of {TARGET_SAMPLES}")
    is_pos = pool["label"].to_numpy()[perm] == 1  # in the shuffle's order
    pos, neg = np.flatnonzero(is_pos), np.flatnonzero(~is_pos)
    k = min(len(pos), max(n - len(neg), (n + 1) // 2))
    take = np.zeros(len(perm), dtype=bool)
    take[pos[:k]] = take[neg[: n - k]] = True
    # kept in the shuffle's order, so that the rows read like a random draw, not positives first
    return pool.iloc[perm[take]].reset_index(drop=True)


def rows_of(splits: pd.DataFrame, task: str, role: str) -> pd.DataFrame:
    return splits[(splits["task"] == task) & (splits["role"] == role)].reset_index(drop=True)


def assert_disjoint(train_ids, test_ids, what: str) -> None:
    """The code's guarantee: no galaxy is in both the training and the test set of an experiment.

    A real check (raises SplitOverlapError), not an ``assert`` statement that ``python -O`` strips.
    """
    both = set(map(str, train_ids)) & set(map(str, test_ids))
    if both:
        raise SplitOverlapError(
            f"{what}: {len(both)} galaxies are in both the training and the test set "
            f"(e.g. {sorted(both)[:5]}); the split is wrong and no metric would be honest"
        )


def experiment_rows(
    exp: Experiment, splits: pd.DataFrame, split_seed: int, sample: str = "random"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(own training rows, all training rows it descends from, test rows) of one experiment.

    ``sample``: how its target training rows are drawn (``target_sample``)."""
    src_train = rows_of(splits, exp.task, "source_train")
    test = rows_of(splits, exp.task, "source_test" if exp.test_on == "source" else "target_test")
    own = (
        target_train(splits, exp.task, exp.n_train, exp.seed, split_seed, sample)
        if exp.trains
        else src_train.iloc[:0]
    )
    lineage = [own]
    if exp.init == "source":
        lineage.append(src_train)
    seen = pd.concat(lineage, ignore_index=True)
    assert_disjoint(seen["id"], test["id"], f"experiment {exp.key}")
    return own, seen, test


# ---- the engine (imported lazily: torch is heavy, and tests swap in fakes) -------------------


def _engine():
    from morphtransfer import train

    return train


def simulated_pair(cfg: dict) -> tuple[str, str]:
    """(source, target) survey names of the built-in simulated pair: SDSS and ``[simulate]
    target_survey`` ("des", the Legacy Survey viewer's DES composite, by default; "des_desaccess",
    the same DES observations as DES's own cutout service serves them; surveys.py)."""
    from morphtransfer.surveys import SURVEYS

    name = str(cfg.get("simulate", {}).get("target_survey", "des")).strip().lower()
    if name not in SURVEYS or name == "sdss":
        known = ", ".join(sorted(k for k in SURVEYS if k != "sdss"))
        raise InputError(f"[simulate] target_survey = {name!r} unknown; use one of {known}")
    return "sdss", name


# "auto" simulation workers: one per usable core, at most this many (each worker holds its own
# Python, GalSim and numpy and a batch of stamps: ~0.5 GiB, from the README's 1.5 GiB summed over
# the main process and 2 workers)
MAX_AUTO_WORKERS = 8


def simulation_workers(value) -> int:
    """[simulate] workers: a number, or "auto" (the default): one rendering process per CPU core
    this process may use, at most MAX_AUTO_WORKERS. The galaxies do not depend on it (each is a
    function of the seed and its index), only the wall time does."""
    if value is None or str(value).strip().lower() == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - macOS, Windows
            cores = os.cpu_count() or 1
        return max(1, min(cores, MAX_AUTO_WORKERS))
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InputError(f"[simulate] workers = {value!r}: give a number of processes or \"auto\"") from None
    if n < 0:
        raise InputError(f"[simulate] workers = {n}: give 0 or more processes, or \"auto\"")
    return n


def _simulate(n: int, seed: int, out: Path, workers: int,
              surveys: tuple[str, str] = ("sdss", "des")) -> None:
    from morphtransfer.simulate import simulate

    # the simulator's own gallery and GZ2 comparison are not part of the study's report
    simulate(n, seed, out, workers=workers, surveys=tuple(surveys), report=False)


def make_recipe(cfg: dict, which: str, n_train: int, seed: int, task: str, fine_tune: bool = False):
    """A train.Recipe from the [recipe.source] / [recipe.target] section.

    ``early_stopping_patience = 0`` turns early stopping off (TOML has no null).
    ``min_steps`` (target only): small samples get more epochs so that every approach sees at
    least that many optimiser steps, and early stopping cannot end a training before them;
    b, c and d of one n_train share the same budget.
    ``fine_tune_learning_rate`` (target only): the learning rate of trainings that start from a
    trained model (b, c; ``fine_tune=True``); from-scratch (d) keeps ``learning_rate``. One value,
    or a table per task (``{ Q1 = 1e-4, Q3 = 1e-3 }``).
    Any other field may be a table per task too (``learning_rate = { Q1 = 1e-3, Q3 = 1e-4 }``);
    a task it does not name takes the engine's default (train.Recipe).
    """
    train = _engine()
    section = _section_for_task(cfg["recipe"].get(which, {}), task)
    min_steps = int(section.pop("min_steps", 0))
    ft_lr = section.pop("fine_tune_learning_rate", None)  # task not named: learning_rate
    if fine_tune and ft_lr is not None:
        section["learning_rate"] = float(ft_lr)
    section["max_epochs"] = _epochs(cfg, which, n_train, task)
    if min_steps:
        section["min_steps"] = min_steps
    section["seed"] = int(seed)
    # TOML has no null: early_stopping_patience = 0 means no early stopping
    if section.get("early_stopping_patience", 1) in (0, None):
        section["early_stopping_patience"] = None
    if "zoom_range" in section:
        section["zoom_range"] = tuple(section["zoom_range"])
    if get_task(task).balance_classes and "balance_classes" not in section:
        section["balance_classes"] = True
    return train.Recipe.from_dict(section)


# ---- the runner ------------------------------------------------------------------------------


@dataclass
class StudyPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def splits(self) -> Path:
        return self.root / "splits.parquet"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.parquet"

    def source_model(self, task: str, seed: int = 0) -> Path:
        return self.root / "models" / task / ("source" + (f"_s{seed}" if seed else ""))

    def model(self, exp: Experiment) -> Path:
        if not exp.trains:
            return self.source_model(exp.task, exp.source_seed)
        return self.root / "models" / exp.task / exp.key.split("/", 1)[1]

    def experiment(self, exp: Experiment) -> Path:
        return self.root / "experiments" / exp.task / exp.key.split("/", 1)[1]


@dataclass
class StudyResult:
    out: Path
    experiments: list[Experiment]
    notes: list[str] = field(default_factory=list)
    trained: int = 0
    timings: dict = field(default_factory=dict)  # wall seconds per phase of this call
    skipped: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class SourceJob:
    """Training one source model: a task's model on the source survey, with one seed."""

    task: str
    seed: int = 0


def _finished(path: Path) -> bool:
    return (path / "done.json").exists() and (path / "predictions.parquet").exists()


def _model_done(path: Path) -> bool:
    return (path / "card.json").exists() and (path / "weights.safetensors").exists()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_or_write_config(paths: StudyPaths, cfg: dict, inputs: dict) -> None:
    stored = {**cfg, "inputs": inputs}
    text = _to_toml(stored)
    if paths.config.exists():
        old = tomllib.loads(paths.config.read_text())
        new = tomllib.loads(text)
        made_by = old.get("inputs", {}).get("engine_version", 1)  # folders from before the key: 1
        if made_by != STUDY_ENGINE_VERSION:
            raise InputError(
                f"{paths.root} holds models and experiments of study engine version {made_by}, "
                f"this morphtransfer runs version {STUDY_ENGINE_VERSION}: a resume would mix the "
                f"two. Delete the run folder {paths.root} (or give another --out) to start afresh"
            )
        old.get("inputs", {}).pop("engine_version", None)
        new.get("inputs", {}).pop("engine_version", None)
        # folders from before target_votes was filled in at start: unset, i.e. "target"
        was, now = target_votes(old), target_votes(new)
        old.setdefault("labels", {})["target_votes"] = was
        if was != now:
            raise InputError(
                f"{paths.root} was run with target galaxies labelled by the {was} survey's "
                f"volunteers (target_votes = {was!r}); this run asks for {now!r}. Resume with "
                f"--target-votes {was}, or pass a new --out folder (unset, the built-in simulated "
                "pair now takes 'source', the study's labelling)"
            )
        # the time estimate, description and simulation workers do not change results
        for d in (old, new):
            d.pop("estimate", None)
            d.pop("description", None)
            d.get("simulate", {}).pop("workers", None)
        if old != new:
            diff = _config_differences(old, new)
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff[:6])
            more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
            # only the recipes' precision differs, one value there: --precision resumes it
            hint = ""
            if all(k.startswith("recipe.") and k.endswith(".precision") for k, _, _ in diff):
                was = {a for _, a, _ in diff}  # precision names: strings, or None where unset
                if len(was) == 1 and None not in was:
                    hint = f" (here: --precision {was.pop()})"
            raise InputError(
                f"{paths.root} holds a run with a different configuration ({paths.config}): "
                f"{shown}{more}. Resume it with the same preset and inputs{hint}, or pass a new "
                "--out folder"
            )
    paths.root.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths.config, text)


def _config_differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, value in ``old``, value in ``new``) wherever two configurations differ
    (None: the key is absent on that side)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _config_differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _rates(cfg: dict, which: str | None = None, task: str | None = None) -> tuple[float, float, float]:
    """(simulated galaxies/s, training images/s, predicted images/s) on this machine: the
    [estimate] speeds times ``speed_factor`` (machine_speed; 1 when not measured). With ``which``
    ("source" / "target") and ``task``, the training rate is that recipe's: times
    ``precision_factor`` of its precision where one was measured (precision_speedups)."""
    est = cfg.get("estimate", {})
    f = float(est.get("speed_factor", 1.0))
    train = f * float(est.get("train_images_per_s", 200.0))
    if which is not None:
        train *= float(est.get("precision_factor", {}).get(_training_precision(cfg, which, task), 1.0))
    return (
        f * float(est.get("simulate_galaxies_per_s", 40.0)),
        train,
        f * float(est.get("predict_images_per_s", 900.0)),
    )


def _training_precision(cfg: dict, which: str, task: str | None) -> str:
    """The Lightning precision one recipe of ``cfg`` trains ``task`` in on this machine ("auto"
    resolved: bf16-mixed where bfloat16 is native)."""
    from morphtransfer.inference import resolve_precision

    value = cfg.get("recipe", {}).get(which, {}).get("precision", "32-true")
    return resolve_precision(_for_task(value, task, "32-true"))


def machine_speed(cfg: dict) -> tuple[float, str]:
    """(speed factor, how it was found) of this machine against the one the [estimate] speeds
    were measured on (``reference_conv_gflops``): the ratio of float32 convolution rates on the
    threads training uses (speed.py: DS18's CPU training is bound by them; ~0.5 s to measure).
    1.0 without a reference, or where training runs on a GPU (the CPU speeds do not apply)."""
    ref = cfg.get("estimate", {}).get("reference_conv_gflops")
    if not ref:
        return 1.0, f"the [estimate] speeds, on {os.cpu_count()} CPU cores"
    from morphtransfer.inference import default_device

    if default_device().type != "cpu":
        return 1.0, "the [estimate] CPU speeds: an upper bound on a GPU"
    import torch

    from morphtransfer.speed import conv_gflops
    from morphtransfer.train import _set_threads

    _set_threads()
    gflops, _ = conv_gflops(reps=4)
    return gflops / float(ref), (
        f"{torch.get_num_threads()} CPU threads at {gflops:.0f} GFLOP/s in a float32 conv, "
        f"against {float(ref):.0f} where the [estimate] speeds were measured"
    )


def with_precision(cfg: dict, precision: str) -> dict:
    """A copy of ``cfg`` whose source and target recipes train in ``precision`` (the name as
    given, so config.toml keeps "auto" as "auto"; an unknown name raises InputError)."""
    from morphtransfer.inference import resolve_precision

    resolve_precision(precision, "cpu")  # checks the name
    recipe = {**cfg.get("recipe", {})}
    for which in ("source", "target"):
        recipe[which] = {**recipe.get(which, {}), "precision": precision}
    return {**cfg, "recipe": recipe}


def precision_speedups(cfg: dict) -> tuple[dict[str, float], str]:
    """({precision: times float32's training speed}, how it was found) for the training
    precisions of ``cfg``'s recipes other than float32, the precision the [estimate] speeds were
    measured in. On a CPU each is measured here (speed.train_step_speedup: DS18 training steps
    in float32 and that precision, alternating, ~4 s each on 2 cores); float32 alone, or a GPU,
    measures nothing."""
    from morphtransfer.inference import default_device

    tasks = list(cfg.get("study", {}).get("tasks", [])) or [None]
    used = {_training_precision(cfg, which, t) for which in ("source", "target") for t in tasks}
    others = sorted(used - {"32-true"})
    if not others or default_device().type != "cpu":
        return {}, ""
    from morphtransfer.speed import train_step_speedup
    from morphtransfer.train import _set_threads

    _set_threads()
    out = {p: train_step_speedup(p) for p in others}
    how = ", ".join(f"{p} training {r:.2f}x float32 here" for p, r in out.items())
    return out, f"{how} (DS18 training steps, speed.train_step_speedup)"


def with_speed(cfg: dict, factor: float, precision_factor: dict[str, float] | None = None) -> dict:
    """A copy of ``cfg`` whose time estimates use ``factor`` (machine_speed) and, per training
    precision, ``precision_factor`` (precision_speedups)."""
    est = {**cfg.get("estimate", {}), "speed_factor": float(factor)}
    if precision_factor:
        est["precision_factor"] = {k: float(v) for k, v in precision_factor.items()}
    return {**cfg, "estimate": est}


# Lightning setup, checkpoints and model loading per training: a fixed cost that dominates the
# smallest fine-tunes (measured ~2 s on 2 cores).
FIT_OVERHEAD_S = 2.0
# the report and its figures, at the end of every estimate
REPORT_S = 20.0


def _epochs(cfg: dict, which: str, n_train: int, task: str) -> int:
    """Epochs of one training: ``max_epochs`` (one value, or a table per task, a task not named
    taking 50), raised so that small samples get ``min_steps`` optimiser steps."""
    r = _section_for_task(cfg["recipe"].get(which, {}), task)
    epochs = int(r.get("max_epochs", 50))
    min_steps = int(r.get("min_steps", 0))
    if min_steps and n_train:
        steps = max(1, math.ceil(n_train * (1 - float(r.get("val_fraction", 0.1))) / int(r.get("batch_size", 30))))
        epochs = max(epochs, math.ceil(min_steps / steps))
    return epochs


def job_seconds(cfg: dict, job, n_test: int) -> float:
    """Predicted seconds of one job: a task's source model (job = task name) or an experiment.

    Upper bound: early stopping usually ends trainings sooner. (c) back-propagates through the
    dense part only, about half the cost of (b) or (d).
    """
    if isinstance(job, SourceJob):
        _, train_rate, _ = _rates(cfg, "source", job.task)
        n = _per_task(cfg["source"]["n_train"], job.task, "[source] n_train")
        return FIT_OVERHEAD_S + n * _epochs(cfg, "source", n, job.task) / train_rate
    _, train_rate, pred_rate = _rates(cfg, "target", job.task)
    sec = n_test / pred_rate + 1.0
    if job.trains:
        factor = 0.55 if job.trainable == "head" else 1.0
        sec += (FIT_OVERHEAD_S
                + job.n_train * _epochs(cfg, "target", job.n_train, job.task) * factor / train_rate)
    return sec


def estimate_seconds(cfg: dict, experiments: list[Experiment], simulate_n: int = 0,
                     n_test: dict | None = None) -> dict:
    """Rough wall time of the study from the [estimate] speeds (printed at start)."""
    sim_rate, _, _ = _rates(cfg)
    tasks = sorted({e.task for e in experiments})
    n_test = n_test or {}
    out = {
        "simulate_s": simulate_n / sim_rate,
        "source_models_s": sum(job_seconds(cfg, SourceJob(t, s), 0) for t in tasks for s in source_seeds(cfg)),
        "experiments_s": sum(job_seconds(cfg, e, n_test.get(e.task, 500)) for e in experiments),
    }
    out["total_s"] = sum(out.values()) + REPORT_S
    return out


class _Clock:
    """Elapsed time and an ETA that rescales the predicted job costs by the measured speed."""

    def __init__(self, costs: list[float]):
        self.costs = costs
        self.t0 = time.time()
        self.done_cost = 0.0
        self.done_time = 0.0
        self._job_t0 = None

    def start(self) -> None:
        self._job_t0 = time.time()

    def finish(self, i: int, skipped: bool = False) -> None:
        if not skipped and self._job_t0 is not None:
            self.done_cost += self.costs[i]
            self.done_time += time.time() - self._job_t0
        self._job_t0 = None

    def line(self, i: int) -> str:
        remaining = sum(self.costs[i:])
        scale = self.done_time / self.done_cost if self.done_cost > 0 else 1.0
        return f"{(time.time() - self.t0) / 60:.1f} min elapsed, ~{remaining * scale / 60:.1f} min left"


def run_study(
    preset: str = "quick",
    out: str | os.PathLike = "runs/quick",
    source: str | os.PathLike | None = None,
    target: str | os.PathLike | None = None,
    *,
    config: dict | None = None,
    progress: bool = True,
    console=None,
    report: bool = True,
    target_votes: str | None = None,
    precision: str | None = None,
) -> StudyResult:
    """Run (or resume) the whole study and write its report into ``out``.

    Without ``source``/``target`` the built-in simulated SDSS/DES pair is simulated into
    ``out/data`` first. With only ``source`` (e.g. the real SDSS Galaxy Zoo Store) only the (0)
    rows are run, for the tasks whose votes the source has. ``config`` replaces the preset's
    configuration (a dict shaped like the TOML presets; tests use it for tiny runs).
    ``target_votes`` ("source" | "target") overrides ``[labels] target_votes``
    (``resolve_target_votes``); ``precision`` ("auto" | "32-true" | "bf16-mixed") the
    ``precision`` of ``[recipe.source]`` and ``[recipe.target]`` (``with_precision``).
    """
    from rich.console import Console

    console = console or Console()
    t_start = time.time()
    cfg = config if config is not None else load_config(preset)
    paths = StudyPaths(Path(out))
    notes: list[str] = []

    if target is not None and source is None:
        raise InputError("--target needs --source: the study transfers a source model to a target survey")
    simulated = source is None
    cfg = resolve_target_votes(cfg, simulated, target_votes)
    if precision is not None:
        cfg = with_precision(cfg, precision)
    # the time estimates only: this machine's speed against the [estimate] speeds' machine
    speed, speed_how = machine_speed(cfg)
    speedups, speedups_how = precision_speedups(cfg)
    if speedups_how:
        speed_how = f"{speed_how}; {speedups_how}"
    est_cfg = with_speed(cfg, speed, speedups)
    est_total = None  # the estimate printed at start, kept in timings.jsonl beside the real time
    if simulated:
        sim = cfg.get("simulate", {})
        sim_n = int(sim.get("n_galaxies", 6000))
        data = paths.root / "data"
        source, target = (data / name for name in simulated_pair(cfg))
        inputs = {"simulated": True, "n_galaxies": sim_n, "seed": int(sim.get("seed", 0))}
        # the estimate before anything runs: the configured sizes, nothing capped yet
        plan0, _ = plan_experiments(cfg, list(cfg["study"]["tasks"]))
        n_test0 = {t: _per_task(cfg["target"]["n_test"], t, "n_test") for t in cfg["study"]["tasks"]}
        sim_done = (data / "simulated.json").exists()
        est0 = estimate_seconds(est_cfg, plan0, 0 if sim_done else sim_n, n_test0)
        est_total = est0["total_s"]
        console.print(
            f"[bold]morphtransfer study[/] preset [cyan]{cfg.get('name')}[/] -> {paths.root}: "
            f"{len(plan0)} experiments on {len(cfg['study']['tasks'])} tasks; estimated time "
            f"~{est0['total_s'] / 60:.0f} min (simulation "
            f"{est0['simulate_s'] / 60:.1f}, source models {est0['source_models_s'] / 60:.1f}, "
            f"experiments {est0['experiments_s'] / 60:.1f} min) from {escape(speed_how)}",
            highlight=False,
        )
    else:
        console.print(
            f"[bold]morphtransfer study[/] preset [cyan]{cfg.get('name')}[/] -> {paths.root}",
            highlight=False,
        )
        inputs = {"simulated": False, "source": str(Path(source).resolve()),
                  "target": str(Path(target).resolve()) if target else ""}
    inputs["engine_version"] = STUDY_ENGINE_VERSION
    _check_or_write_config(paths, cfg, inputs)

    if simulated:
        t_sim = time.time()
        _ensure_simulated(paths.root / "data", est_cfg, console, sim_n)
        sim_s = time.time() - t_sim

    from morphtransfer.data.store import Store

    src_store = Store(source)
    tgt_store = Store(target) if target is not None else None
    if tgt_store is None:
        notes.append(
            "source Store only: the (0) rows (source model on source test set) are run; "
            "a, b, c, d need a --target Store"
        )

    # tasks this data can answer
    tasks: list[str] = []
    src_cat = prepare_catalog(src_store.catalog)
    tgt_cat = prepare_catalog(tgt_store.catalog) if tgt_store is not None else None
    votes = cfg["labels"]["target_votes"]  # resolved at start
    for t in cfg["study"]["tasks"]:
        try:
            lab_s = task_labels(src_cat, t, cfg["labels"])
            lab_t = target_labels(tgt_cat, src_cat, lab_s, t, cfg) if tgt_cat is not None else None
        except InputError as exc:
            notes.append(f"{t} skipped: {exc}")
            continue
        n_s = int((lab_s >= 0).sum())
        pos_s = int((lab_s == 1).sum())
        if n_s < 20 or pos_s < 3 or n_s - pos_s < 3:
            notes.append(
                f"{t} skipped: the source Store has {n_s} robust galaxies ({pos_s} positive) for "
                f"{get_task(t).title}; it has no usable labels for this question"
            )
            continue
        if lab_t is not None and int((lab_t >= 0).sum()) < 10:
            notes.append(f"{t} skipped: the target Store has too few robust labels" + (
                " (target_votes = 'source': target galaxies take the source Store's labels of the "
                "same id or position, and too few of them match)" if votes == "source" else ""))
            continue
        tasks.append(t)
    if not tasks:
        raise InputError(
            f"no task of {cfg['study']['tasks']} has robust labels in {src_store.path}; "
            "the Store needs vote columns (<question>_<answer>_count/fraction); see tasks.py"
        )

    for n in notes:
        console.print(f"  note: {escape(n)}", highlight=False)
    split_seed = int(cfg["study"].get("split_seed", 0))
    splits = pd.concat(
        [make_splits(src_cat, tgt_cat, t, cfg) for t in tasks], ignore_index=True
    )
    if paths.splits.exists():
        old = pd.read_parquet(paths.splits)
        if not old.reset_index(drop=True).equals(splits.reset_index(drop=True)):
            raise InputError(
                f"the Stores changed since {paths.splits} was written (different robust galaxies); "
                "resume only over the same data, or pass a new --out folder"
            )
    else:
        tmp = paths.splits.with_name("splits.parquet.tmp")
        splits.to_parquet(tmp, index=False)
        os.replace(tmp, paths.splits)

    pool_sizes = {t: len(rows_of(splits, t, "target_pool")) for t in tasks} if tgt_store else None
    # (0t) where the source Store holds every target test galaxy (same id, or same position)
    target_test_ids = splits.loc[splits["role"] == "target_test", "id"].drop_duplicates()
    paired = bool(tgt_store is not None and len(target_test_ids)
                  and (paired_source_ids(target_test_ids, tgt_cat, src_cat) != "").all())
    experiments, plan_notes = plan_experiments(cfg, tasks, tgt_store is not None, pool_sizes, paired)
    notes += plan_notes
    n_test = {
        t: len(rows_of(splits, t, "target_test" if tgt_store else "source_test")) for t in tasks
    }
    jobs: list = [SourceJob(t, s) for t in tasks for s in source_seeds(cfg)] + list(experiments)
    costs = [job_seconds(est_cfg, j, 0 if isinstance(j, SourceJob) else n_test[j.task]) for j in jobs]
    if est_total is None:
        est_total = sum(costs) + REPORT_S
    n_train_jobs = len(jobs) - len(experiments) + sum(e.trains for e in experiments)
    console.print(
        f"  source {src_store.path} ({len(src_store)} galaxies)"
        + (f", target {tgt_store.path} ({len(tgt_store)} galaxies)" if tgt_store else "")
        + f"\n  tasks {', '.join(tasks)}: {len(experiments)} experiments, {n_train_jobs} models to "
        f"train, ~{sum(costs) / 60:.0f} min",
        highlight=False,
    )
    for t in tasks:
        parts = []
        for role in ROLES:
            r = rows_of(splits, t, role)
            if len(r):
                parts.append(f"{role} {len(r)} ({int((r['label'] == 1).sum())} pos)")
        console.print(f"  {t} robust galaxies: " + ", ".join(parts), highlight=False)

    result = StudyResult(paths.root, experiments, notes)
    engine = _engine()
    clock = _Clock(costs)
    phase = {"source_models_s": 0.0, "experiments_s": 0.0}
    for i, job in enumerate(jobs):
        head = f"[{i + 1}/{len(jobs)}]"
        clock.start()
        if isinstance(job, SourceJob):
            did = _run_source_model(engine, job, cfg, splits, src_store, paths, console, head, result,
                                    progress, clock.line(i))
        else:
            did = _run_experiment(engine, job, cfg, splits, src_store, tgt_store, paths, console, head,
                                  result, progress, split_seed, clock.line(i))
        phase["source_models_s" if isinstance(job, SourceJob) else "experiments_s"] += time.time() - clock._job_t0
        clock.finish(i, skipped=not did)

    preds = collect_predictions(paths, experiments)
    tmp = paths.predictions.with_name("predictions.parquet.tmp")
    preds.to_parquet(tmp, index=False)
    os.replace(tmp, paths.predictions)
    t_report = time.time()
    if report:
        from morphtransfer.report import write_report

        console.print("  writing the report (table 2, figures, report.html) ...")
        write_report(
            paths.root,
            cfg=cfg,
            source_store=src_store,
            target_store=tgt_store,
            notes=notes,
            console=console,
        )
    result.elapsed_s = time.time() - t_start
    result.timings = {
        "simulate_s": round(sim_s, 1) if simulated else 0.0,
        **{k: round(v, 1) for k, v in phase.items()},
        "report_s": round(time.time() - t_report, 1),
        "total_s": round(result.elapsed_s, 1),
        "models_trained": result.trained,
        "steps_reused": result.skipped,
        "estimated_total_s": round(est_total, 1),
        "speed_factor": round(speed, 3),
        **({"precision_factor": {k: round(v, 3) for k, v in speedups.items()}} if speedups else {}),
    }
    # appended per call: a resumed run shows each of its sessions
    with (paths.root / "timings.jsonl").open("a") as fh:
        fh.write(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **result.timings}) + "\n")
    console.print(
        f"[bold green]done[/] in {result.elapsed_s / 60:.1f} min: {result.trained} models trained, "
        f"{result.skipped} finished steps reused; open {paths.root / 'report.html'}",
        highlight=False,
    )
    if report:
        _print_summary(paths.root, console)
    for n in notes:
        console.print(f"  note: {escape(n)}", highlight=False)
    return result


def _print_summary(root: Path, console) -> None:
    """Table 2, the label budget and the findings/claims lines of a reported run folder."""
    if not (root / "table2.md").exists():
        return
    # soft_wrap: table rows stay one line each, also in a log file (rich wraps those at 80)
    console.print((root / "table2.md").read_text().split("\n\n")[0], highlight=False,
                  markup=False, soft_wrap=True)
    if (root / "label_budget.md").exists():
        console.print("Label budget (AUC; label_budget.md):", highlight=False)
        console.print((root / "label_budget.md").read_text().split("\n\n")[0],
                      highlight=False, markup=False, soft_wrap=True)
    for line in _findings_lines(root / "metrics.json"):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def run_store_paths(root: Path, cfg: dict) -> dict[str, Path]:
    """{"source": path, "target": path} of the Stores a run folder's study read, from its stored
    configuration: the simulated pair under ``root/data``, or the --source/--target Stores of its
    [inputs] (a role the run had no Store for is left out)."""
    inputs = cfg.get("inputs", {})
    if inputs.get("simulated"):
        return dict(zip(("source", "target"), (root / "data" / n for n in simulated_pair(cfg))))
    return {k: Path(inputs[k]) for k in ("source", "target") if inputs.get(k)}


def report_run(out: str | os.PathLike, console=None) -> dict:
    """Write the report of a run folder again from its ``predictions.parquet``: Table 2, the
    label budget, metrics.json, the figures and report.html, with nothing trained or predicted
    (``morphtransfer report``). The Stores the run used (its ``config.toml`` [inputs]) give the
    image figures; where they are gone those figures are left out, with a note. Returns
    {name: path} of what was written."""
    from rich.console import Console

    from morphtransfer.data.store import Store
    from morphtransfer.report import write_report

    console = console or Console()
    root = Path(out)
    if not (root / "config.toml").exists():
        raise InputError(f"{root} is not a study run folder (no config.toml): "
                         f"`morphtransfer run --out {root}` makes one")
    if not (root / "predictions.parquet").exists():
        raise InputError(f"{root} has no predictions.parquet yet: the run stopped before its "
                         f"first results were collected; `morphtransfer run --out {root}` with "
                         "the same options resumes it")
    try:
        cfg = tomllib.loads((root / "config.toml").read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{root / 'config.toml'} is not valid TOML ({exc}): restore it, or "
                         "re-run the study into a new --out folder") from exc
    stores, notes = {}, []
    for role, place in run_store_paths(root, cfg).items():
        try:
            stores[role] = Store(place)
        except (InputError, OSError) as exc:
            notes.append(f"{role} Store {place} could not be opened ({exc}): the image figures "
                         "are left out")
    metrics = root / "metrics.json"
    if metrics.exists():
        # the run's own notes (capped sizes, skipped tasks, balanced samples) are kept
        try:
            notes = list(json.loads(metrics.read_text()).get("notes") or []) + notes
        except json.JSONDecodeError:
            notes.append(f"{metrics} was not valid JSON; the run's earlier notes are lost")
    # source models that ended on the loss plateau: said again from their cards, whatever became
    # of metrics.json
    paths = StudyPaths(root)
    for task in cfg.get("study", {}).get("tasks", []):
        for seed in source_seeds(cfg):
            note = _plateau_note(_source_model_name(cfg, task, seed), paths.source_model(task, seed))
            if note is not None and note not in notes:
                notes.append(note)
    console.print(f"rewriting the report of {root} from predictions.parquet ...", highlight=False)
    written = write_report(root, cfg=cfg, source_store=stores.get("source"),
                           target_store=stores.get("target"), notes=notes, console=console)
    _print_summary(root, console)
    for n in notes:
        console.print(f"  note: {escape(n)}", highlight=False)
    console.print(f"[bold green]done[/]: open {root / 'report.html'}", highlight=False)
    return written


def _findings_lines(metrics_json: Path) -> list[str]:
    """The study's claims as measured by this run, one line per question (report.findings)."""
    if not metrics_json.exists():
        return []
    doc = json.loads(metrics_json.read_text())
    rows = doc.get("findings", [])
    out = []
    for r in rows:
        if r.get("auc_b_minus_d") is None:
            continue
        f = lambda v, fmt="+.3f": "-" if v is None else format(v, fmt)  # noqa: E731
        out.append(
            f"  {r['question']}: (a)-(0) TPR {f(r['tpr_a_minus_0'])}, precision "
            f"{f(r['precision_a_minus_0'])}; (b)-(0) AUC {f(r['auc_b_minus_0'])}"
            + (f" (on the same galaxies: (a)-(0t) {f(r['auc_a_minus_0t'])}, (b)-(0t) "
               f"{f(r['auc_b_minus_0t'])})" if r.get("auc_b_minus_0t") is not None else "")
            + f"; (b)-(d) AUC "
            f"{f(r['auc_b_minus_d'])} ± {f(r['auc_b_minus_d_std'], '.3f')} at N={r['n_train_main']}"
            + (f", {f(r['auc_b_minus_d_smallest_n'])} at N={r['n_train_smallest']}"
               if r.get("n_train_smallest") else "")
            + f"; (d) reaches {f(r['d_skill_fraction'], '.0%')} of (b)'s AUC above chance"
            + (f" ({r['d_flat_seeds']} of {r['d_seeds']} (d) seeds flat: P barely varies"
               + (f"; {r['d_dead_seeds']} dead" if r.get("d_dead_seeds") else "") + ")"
               if r.get("d_flat_seeds") else "")
        )
    if out:
        out.insert(0, "findings (each explained in report.html):")
        from morphtransfer.report.tables import claims_lines

        said = claims_lines(doc.get("claims") or {}, [r["question"] for r in rows])
        if said:
            out += ["claims, per question:"] + [f"  {s}" for s in said]
    return out


def _ensure_simulated(data: Path, cfg: dict, console, n: int) -> None:
    sim = cfg.get("simulate", {})
    from morphtransfer.simulate.pipeline import SIMULATOR_VERSION

    done = data / "simulated.json"
    if done.exists():
        made = json.loads(done.read_text())
        version = made.get("simulator_version", 1)
        if version != SIMULATOR_VERSION:
            raise InputError(
                f"{data} holds galaxies from simulator version {version}, this morphtransfer "
                f"simulates version {SIMULATOR_VERSION}: results would mix the two. Delete the run "
                f"folder {data.parent} (or give another --out) to start the study afresh"
            )
        if made.get("n_galaxies") == n:
            console.print(f"  simulated SDSS/DES pair found in {data} ({n} galaxies)", highlight=False)
            return
    sim_rate, _, _ = _rates(cfg)
    console.print(
        f"  simulating {n} galaxies seen by SDSS and DES into {data} "
        f"(about {n / sim_rate / 60:.1f} min) ...",
        highlight=False,
    )
    t0 = time.time()
    _simulate(n, int(sim.get("seed", 0)), data, simulation_workers(sim.get("workers")), simulated_pair(cfg))
    data.mkdir(parents=True, exist_ok=True)
    _write_atomic(done, json.dumps({"n_galaxies": n, "seed": int(sim.get("seed", 0)),
                                    "surveys": list(simulated_pair(cfg)),
                                    "simulator_version": SIMULATOR_VERSION,
                                    "elapsed_s": round(time.time() - t0, 1)}))


def _labelled(store, rows: pd.DataFrame) -> pd.DataFrame:
    """Store catalogue rows of the given ids (in that order) with their robust label."""
    cat = store.catalog
    idx = pd.Index(cat["id"].astype(str))
    pos = idx.get_indexer(rows["id"].astype(str))
    if (pos < 0).any():
        missing = rows["id"].astype(str)[pos < 0].tolist()[:5]
        raise InputError(f"galaxies {missing} of the split are not in Store {store.path}")
    out = cat.iloc[pos].reset_index(drop=True).copy()
    out["label"] = rows["label"].to_numpy().astype("int64")
    return out


def _run_source_model(engine, job, cfg, splits, store, paths, console, head, result, progress, eta) -> bool:
    task = job.task
    folder = paths.source_model(task, job.seed)
    name = _source_model_name(cfg, task, job.seed)
    if _model_done(folder):
        result.skipped += 1
        console.print(f"{head} {name}: done already ({folder})", highlight=False)
        _note_plateau(name, folder, console, head, result)
        return False
    rows = _labelled(store, rows_of(splits, task, "source_train"))
    test_ids = set(rows_of(splits, task, "source_test")["id"]) | set(rows_of(splits, task, "target_test")["id"])
    assert_disjoint(rows["id"], test_ids, f"{task} source model")
    recipe = make_recipe(cfg, "source", len(rows), job.seed, task)
    console.print(
        f"{head} {name}: training on {len(rows)} {store.survey or 'source'} galaxies "
        f"({int(rows['label'].sum())} positive) [{eta}]",
        highlight=False,
    )
    engine.train_model(
        store, task, rows=rows, label_column="label", init=None, trainable="all", recipe=recipe,
        out=folder, card_extra={"study": {"experiment": "source", "role": "source_train", "seed": job.seed}},
        progress=progress,
    )
    result.trained += 1
    _note_plateau(name, folder, console, head, result)
    return True


def _source_model_name(cfg: dict, task: str, seed: int) -> str:
    return f"{task} source model" + (f" (seed {seed})" if len(source_seeds(cfg)) > 1 else "")


def _note_plateau(name: str, folder: Path, console, head: str, result) -> None:
    """Say, on the console and in the report's notes, when a source model ended on the loss
    plateau (the engine's ``left_plateau``): its (0), (0t), (a), (b) and (c) rows rest on a model
    that learnt little of its labels."""
    note = _plateau_note(name, folder)
    if note is None:
        return
    result.notes.append(note)
    console.print(f"{head} [yellow]{escape(note)}[/]", highlight=False)


def _plateau_note(name: str, folder: Path) -> str | None:
    """The note on a model that ended on the loss plateau, from its card; None otherwise (and for
    cards written before the engine recorded it)."""
    card_path = folder / "card.json"
    if not card_path.exists():
        return None
    card = json.loads(card_path.read_text())
    if card.get("left_plateau", True):
        return None
    return (
        f"{name} did not leave the loss plateau (best validation loss {card['best_val_loss']:.4f}, "
        f"a constant P gives {card['chance_val_loss']:.4f}; validation AUC {card.get('val_auc', float('nan')):.3f}): "
        "the rows that start from it say little. Run the study again into a new --out with a "
        "lower learning_rate or more epochs for this task in [recipe.source] of a copied preset "
        "(e.g. learning_rate = { Q3 = 1e-4 })"
    )


def _run_experiment(engine, exp, cfg, splits, src_store, tgt_store, paths, console, head, result,
                    progress, split_seed, eta) -> bool:
    folder = paths.experiment(exp)
    if _finished(folder):
        result.skipped += 1
        console.print(f"{head} {exp.key} ({exp.title}): done already", highlight=False)
        return False
    own, seen, test = experiment_rows(exp, splits, split_seed, target_sample(cfg, exp.task))
    test_store = src_store if exp.test_on in ("source", "paired") else tgt_store
    model = paths.model(exp)
    t0 = time.time()
    if exp.trains and not _model_done(model):
        rows = _labelled(tgt_store, own)
        n_pos = int((rows["label"] == 1).sum())
        if n_pos in (0, len(rows)):
            # a rare class and a small random sample (e.g. 50 random DES galaxies, ~2 bars
            # expected, can hold none): nothing to learn from; the run goes on without this row
            note = (
                f"{exp.key} not run: its {len(rows)} {target_sample(cfg, exp.task)} "
                f"{tgt_store.survey or 'target'} training galaxies (seed {exp.seed}) are all "
                f"{'positive' if n_pos else 'negative'} for {get_task(exp.task).title}, and no "
                "classifier learns from one class; label more galaxies (a larger N_train) or draw "
                "the sample with [target] sample = \"balanced\""
            )
            result.notes.append(note)
            console.print(f"{head} {escape(note)}", highlight=False)
            return False
        console.print(
            f"{head} {exp.key} ({exp.title}): training on {len(rows)} {tgt_store.survey or 'target'} "
            f"galaxies ({n_pos} positive) [{eta}]",
            highlight=False,
        )
        init = paths.source_model(exp.task, exp.source_seed) if exp.init == "source" else (
            None if exp.init == "scratch" else Path(exp.init)
        )
        recipe = make_recipe(cfg, "target", len(rows), exp.seed, exp.task, fine_tune=init is not None)
        engine.train_model(
            tgt_store, exp.task, rows=rows, label_column="label", init=init,
            trainable=exp.trainable, recipe=recipe, out=model,
            card_extra={"study": {**asdict(exp), "key": exp.key}}, progress=progress,
        )
        result.trained += 1
    else:
        console.print(
            f"{head} {exp.key} ({exp.title}): testing on {len(test)} "
            f"{test_store.survey or exp.test_on} galaxies [{eta}]",
            highlight=False,
        )
    if exp.test_on == "paired":
        # the target test galaxies' own source images: under their source ids, which can differ
        src_ids = paired_source_ids(test["id"], tgt_store.catalog, src_store.catalog)
        if (src_ids == "").any():
            raise InputError(f"{exp.key}: {int((src_ids == '').sum())} target test galaxies have no "
                             f"counterpart in Store {src_store.path}; the Stores changed since the plan")
        assert_disjoint(rows_of(splits, exp.task, "source_train")["id"], src_ids,
                        f"experiment {exp.key} (source images of the target test galaxies)")
        test_rows = _labelled(test_store, test.assign(id=src_ids))
        test_rows["id"] = test["id"].astype(str).to_numpy()  # named as in (a)-(d): the same galaxies
    else:
        test_rows = _labelled(test_store, test)
    p = np.asarray(engine.predict_store(model, test_store, rows=test_rows), dtype="float64")
    if p.shape != (len(test_rows),):
        raise RuntimeError(f"predict_store returned {p.shape} for {len(test_rows)} test galaxies")
    task = get_task(exp.task)
    truth = (
        test_rows[task.truth_column].astype("float64").to_numpy()
        if task.truth_column in test_rows.columns
        else np.full(len(test_rows), np.nan)
    )
    preds = pd.DataFrame(
        {
            "id": test_rows["id"].astype("string"),
            "task": exp.task,
            "experiment": exp.name,
            "seed": np.int64(exp.seed),
            "n_train": np.int64(exp.n_train if exp.trains else len(rows_of(splits, exp.task, "source_train"))),
            "n_train_target": np.int64(exp.n_train),
            "split": "test",
            "survey": test_store.survey or exp.test_on,
            "label": test_rows["label"].astype("int64").to_numpy(),
            "p": p,
            "truth": truth,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "predictions.parquet.tmp"
    preds.to_parquet(tmp, index=False)
    os.replace(tmp, folder / "predictions.parquet")
    _write_atomic(
        folder / "done.json",
        json.dumps({**asdict(exp), "key": exp.key, "model": str(model), "n_test": len(preds),
                    "elapsed_s": round(time.time() - t0, 2)}, indent=2),
    )
    return True


def collect_predictions(paths: StudyPaths, experiments: list[Experiment]) -> pd.DataFrame:
    """Every finished experiment's test predictions, with the model's validation threshold.

    ``p_threshold_val``: the threshold the engine chose on the model's own validation galaxies
    (Youden's J; in the model card). The study notes that P_th = 0.5 is not optimal for a model
    applied to another survey; (0) and (a) share the source model's, chosen on source data.
    ``active_feature_channels``: the card's count of firing feature channels (0: a dead network;
    NaN for models trained before it was kept).
    """
    frames = []
    for exp in experiments:
        f = paths.experiment(exp) / "predictions.parquet"
        if f.exists():
            d = pd.read_parquet(f)
            card = paths.model(exp) / "card.json"
            info = json.loads(card.read_text()) if card.exists() else {}
            thr, act = info.get("p_threshold_val"), info.get("active_feature_channels")
            d["p_threshold_val"] = float(thr) if thr is not None else np.nan
            d["active_feature_channels"] = float(act) if act is not None else np.nan
            frames.append(d)
    if not frames:
        return pd.DataFrame(columns=["id", "task", "experiment", "seed", "n_train", "split", "label", "p"])
    return pd.concat(frames, ignore_index=True)
