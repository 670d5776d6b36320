"""The study's bookkeeping: experiment list, splits (no galaxy in train and test), resume, config."""

from __future__ import annotations

import json
import math
import re
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from study_helpers import make_pair, tiny_config

from morphtransfer import study
from morphtransfer.data.store import Store
from morphtransfer.errors import InputError


class FakeEngine:
    """Stands in for morphtransfer.train: counts calls, writes a model card, predicts from labels."""

    class Recipe(dict):
        @classmethod
        def from_dict(cls, d):
            return cls(d)

    def __init__(self):
        self.trained: list[dict] = []
        self.predicted = 0

    def train_model(self, store, task, *, rows, label_column, init, trainable, recipe, out, card_extra, progress):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "weights.safetensors").write_bytes(b"x")
        (out / "card.json").write_text(json.dumps({"task": task, "n_train": len(rows), **card_extra}))
        self.trained.append({"task": task, "init": init, "trainable": trainable, "ids": list(rows["id"]),
                             "recipe": dict(recipe), "out": str(out)})
        return out

    def predict_store(self, model, store, rows):
        self.predicted += 1
        # deterministic per model and test set; two models give two different sets of scores
        rng = np.random.default_rng([len(rows), zlib.crc32(Path(model).name.encode())])
        # informative but imperfect scores: label plus noise
        return np.clip(0.5 * rows["label"].to_numpy() + 0.6 * rng.random(len(rows)), 0, 1)


@pytest.fixture()
def pair(tmp_path):
    return make_pair(tmp_path / "data", n=400)


def test_presets_load_and_plan_the_study():
    quick = study.load_config("quick")
    paper = study.load_config("paper")
    assert paper["source"]["n_train"] == {"Q1": 5000, "Q2": 5000, "Q3": 10000}
    assert paper["target"]["n_train"] == {"Q1": 500, "Q2": 500, "Q3": 300}
    assert paper["sweep"]["n_train"] == [50, 100, 200, 300, 500, 1000]
    exps, notes = study.plan_experiments(paper, ["Q1", "Q2", "Q3"])
    per_task = {t: [e for e in exps if e.task == t] for t in ("Q1", "Q2", "Q3")}
    # 0 and a once; b, c, d x 3 seeds x (6 sweep points; the main n is one of them)
    assert len(per_task["Q1"]) == 2 + 3 * 3 * 6
    assert len(per_task["Q3"]) == 2 + 3 * 3 * 6
    assert len({e.key for e in exps}) == len(exps)
    b = [e for e in exps if e.name == "b"][0]
    assert (b.init, b.trainable, b.test_on) == ("source", "all", "target")
    c = study.make_experiment("Q3", "c", 300, 1)
    assert (c.init, c.trainable, c.key) == ("source", "head", "Q3/c_n300_s1")
    assert study.make_experiment("Q1", "d", 50, 0).init == "scratch"
    assert study.make_experiment("Q1", "0").test_on == "source"
    # paired Stores (the source holds the target test galaxies): (0t) once per source model
    exps_p, _ = study.plan_experiments(paper, ["Q1", "Q2", "Q3"], paired=True)
    assert len(exps_p) == len(exps) + 3
    t0 = [e for e in exps_p if e.name == "0t"]
    assert [e.key for e in t0] == ["Q1/0t", "Q2/0t", "Q3/0t"]
    assert (t0[0].init, t0[0].trainable, t0[0].test_on) == ("source", "none", "paired")
    # a pool smaller than the main n caps it, and says so
    exps, notes = study.plan_experiments(paper, ["Q3"], pool_sizes={"Q3": 250})
    assert {e.n_train for e in exps if e.name == "b"} == {50, 100, 200, 250}
    assert any("n_train=250" in n for n in notes)
    # a source Store alone: only the (0) rows
    exps, _ = study.plan_experiments(quick, ["Q1", "Q2"], with_target=False)
    assert [e.key for e in exps] == ["Q1/0", "Q2/0"]
    with pytest.raises(InputError, match="unknown preset"):
        study.load_config("huge")


def test_splits_never_put_a_test_galaxy_in_training(pair):
    src, tgt = Store(pair[0]), Store(pair[1])
    cfg = tiny_config()
    for task in ("Q1", "Q2", "Q3"):
        sp = study.make_splits(src.catalog, tgt.catalog, task, cfg)
        roles = {r: set(sp[sp["role"] == r]["id"]) for r in study.ROLES}
        assert not roles["target_test"] & roles["target_pool"]
        assert not roles["source_train"] & (roles["source_test"] | roles["target_test"])
        assert len(roles["source_train"]) <= cfg["source"]["n_train"][task]
        # labels are each survey's own robust labels
        lab_t = study.task_labels(study.prepare_catalog(tgt.catalog), task, cfg["labels"])
        t = sp[sp["survey"] == "target"]
        ref = dict(zip(tgt.catalog["id"], lab_t))
        assert (t["label"].to_numpy() == np.array([ref[i] for i in t["id"]])).all()
        assert (t["label"] >= 0).all()
        for e in study.plan_experiments(cfg, [task], pool_sizes={task: len(roles["target_pool"])})[0]:
            own, seen, test = study.experiment_rows(e, sp, cfg["study"]["split_seed"])
            assert len(own) == e.n_train
            assert not set(seen["id"]) & set(test["id"])
    # nested samples per seed, different samples across seeds
    sp = study.make_splits(src.catalog, tgt.catalog, "Q1", cfg)
    s10 = set(study.target_train(sp, "Q1", 10, 0, 7)["id"])
    s20 = set(study.target_train(sp, "Q1", 20, 0, 7)["id"])
    assert s10 < s20
    assert set(study.target_train(sp, "Q1", 20, 1, 7)["id"]) != s20


def _with_stray_bar_votes(cat: pd.DataFrame) -> pd.DataFrame:
    """The catalogue with every elliptical given 30% of its votes as 'featured', 'not edge-on',
    'no bar' (12 of 40 SDSS, 6 of 20 DES votes): robust 'not barred' without prerequisites, off
    the bar question's path with them."""
    c = cat.copy()
    ell = ~c["true_disk"].to_numpy()
    total = c["smooth_or_featured_smooth_count"] + c["smooth_or_featured_featured_or_disk_count"]
    k = (0.3 * total[ell]).round().astype(int)
    c.loc[ell, "smooth_or_featured_featured_or_disk_count"] = k
    c.loc[ell, "smooth_or_featured_smooth_count"] = total[ell] - k
    c.loc[ell, ["disk_edge_on_yes_count", "bar_yes_count"]] = 0
    c.loc[ell, "disk_edge_on_no_count"] = k
    c.loc[ell, "bar_no_count"] = k
    return study.prepare_catalog(c)


def test_prerequisite_fraction_reaches_the_splits(pair):
    cats = {"source": _with_stray_bar_votes(Store(pair[0]).catalog),
            "target": _with_stray_bar_votes(Store(pair[1]).catalog)}
    cfg = tiny_config()
    off = study.make_splits(cats["source"], cats["target"], "Q3", cfg)
    cfg["labels"]["prerequisite_fraction"] = 0.5
    on = study.make_splits(cats["source"], cats["target"], "Q3", cfg)
    for survey, cat in cats.items():
        c = cat.set_index("id")
        # without prerequisites the ellipticals enter as "not barred"; with them none does, and
        # every labelled galaxy took the bar question's path in its own survey's votes
        assert (~c.loc[off[off["survey"] == survey]["id"], "true_disk"]).sum() > 0
        ids = on[on["survey"] == survey]["id"]
        assert c.loc[ids, "true_disk"].all()
        assert (c.loc[ids, "smooth_or_featured_featured_or_disk_fraction"] > 0.5).all()
        assert (c.loc[ids, "disk_edge_on_no_fraction"] > 0.5).all()
        n_ell = int((~c["true_disk"]).sum())
        n_off = int((study.task_labels(cat, "Q3", {**cfg["labels"], "prerequisite_fraction": 0}) >= 0).sum())
        n_on = int((study.task_labels(cat, "Q3", cfg["labels"]) >= 0).sum())
        assert n_off - n_on >= n_ell  # every elliptical (30% featured) is dropped
        # per task: the bar question on its path, the edge-on question not
        per_task = {**cfg["labels"], "prerequisite_fraction": {"Q3": 0.5}}
        assert (study.task_labels(cat, "Q3", per_task) == study.task_labels(cat, "Q3", cfg["labels"])).all()
        assert (study.task_labels(cat, "Q2", per_task)
                == study.task_labels(cat, "Q2", {**cfg["labels"], "prerequisite_fraction": 0})).all()
        assert (study.task_labels(cat, "Q2", per_task) >= 0).sum() > (study.task_labels(cat, "Q2", cfg["labels"]) >= 0).sum()


def _pool(n=200, n_pos=20, task="Q3"):
    lab = np.zeros(n, dtype=int)
    lab[np.random.default_rng(5).choice(n, n_pos, replace=False)] = 1
    return pd.DataFrame({"task": task, "id": [f"g{i}" for i in range(n)], "survey": "target",
                         "role": "target_pool", "label": lab, "order": np.arange(n)})


def test_balanced_target_samples_are_half_positive_nested_and_seeded():
    sp = _pool()
    pos = lambda d: int(d["label"].sum())  # noqa: E731
    b10, b30, b60 = (study.target_train(sp, "Q3", n, 0, 7, "balanced") for n in (10, 30, 60))
    assert (len(b10), pos(b10)) == (10, 5)
    assert (len(b30), pos(b30)) == (30, 15)
    assert (len(b60), pos(b60)) == (60, 20)  # only 20 positives in the pool: all, then negatives
    assert set(b10["id"]) < set(b30["id"]) < set(b60["id"])
    assert len(set(b60["id"])) == 60
    # the random draw keeps the pool's share (10%), seeds differ, odd n gives the extra one to positives
    r60 = study.target_train(sp, "Q3", 60, 0, 7)
    assert pos(r60) < 15 and set(r60["id"]) != set(b60["id"])
    assert set(study.target_train(sp, "Q3", 30, 1, 7, "balanced")["id"]) != set(b30["id"])
    assert pos(study.target_train(sp, "Q3", 11, 0, 7, "balanced")) == 6
    # positives are not all first: the rows keep the shuffle's order
    assert b30["label"].iloc[:15].sum() < 15
    with pytest.raises(InputError, match="unknown"):
        study.target_train(sp, "Q3", 10, 0, 7, "stratified")


def test_target_sample_setting_per_task():
    cfg = tiny_config()
    assert study.target_sample(cfg, "Q3") == "random"
    cfg["target"]["sample"] = "balanced"
    assert study.target_sample(cfg, "Q1") == "balanced"
    cfg["target"]["sample"] = {"Q3": "balanced"}
    assert [study.target_sample(cfg, t) for t in ("Q1", "Q3")] == ["random", "balanced"]
    cfg["target"]["sample"] = {"Q3": "half"}
    with pytest.raises(InputError, match=r"\[target\] sample = 'half' for Q3"):
        study.target_sample(cfg, "Q3")


def test_run_study_draws_the_configured_sample_per_task(pair, tmp_path, monkeypatch):
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    cfg = tiny_config()
    cfg["target"]["sample"] = {"Q2": "balanced"}
    res = study.run_study(out=tmp_path / "r", source=pair[0], target=pair[1], config=cfg, progress=False,
                          report=False)
    assert any(n.startswith("Q2: the target training samples") for n in res.notes)
    assert not any("Q1: the target training samples" in n for n in res.notes)
    sp = pd.read_parquet(tmp_path / "r" / "splits.parquet")
    for task in ("Q1", "Q2"):
        lab = dict(zip(sp[sp["task"] == task]["id"], sp[sp["task"] == task]["label"]))
        pool = sp[(sp["task"] == task) & (sp["role"] == "target_pool")]
        share = pool["label"].mean()
        runs = [t for t in eng.trained if t["task"] == task and Path(t["out"]).name.startswith("b_")]
        assert runs
        for t in runs:
            n, n_pos = len(t["ids"]), sum(lab[i] for i in t["ids"])
            if task == "Q2":  # half positives (or every positive of the pool)
                assert n_pos == min((n + 1) // 2, int(pool["label"].sum()))
            else:
                assert abs(n_pos / n - share) < 0.35
    assert "sample" in tomllib.loads((tmp_path / "r" / "config.toml").read_text())["target"]


def test_overlap_assertion_fires(pair):
    src, tgt = Store(pair[0]), Store(pair[1])
    cfg = tiny_config()
    sp = study.make_splits(src.catalog, tgt.catalog, "Q1", cfg)
    # corrupt the split: one test galaxy slips into the source training set
    leak = sp[sp["role"] == "target_test"].iloc[[0]].assign(role="source_train")
    bad = pd.concat([sp, leak], ignore_index=True)
    with pytest.raises(study.SplitOverlapError, match="both the training and the test set"):
        study.experiment_rows(study.make_experiment("Q1", "b", 10, 0), bad, 7)
    with pytest.raises(study.SplitOverlapError):
        study.experiment_rows(study.make_experiment("Q1", "a"), bad, 7)
    # (d) never saw the source training set, so the same corruption does not concern it
    study.experiment_rows(study.make_experiment("Q1", "d", 10, 0), bad, 7)
    with pytest.raises(AssertionError):
        study.assert_disjoint(["x", "y"], ["y"], "test")


def test_run_resumes_without_redoing_finished_experiments(pair, tmp_path, monkeypatch):
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    cfg = tiny_config()
    out = tmp_path / "run"
    res = study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, progress=False, report=False)
    exps = res.experiments
    n_target_models = sum(e.trains for e in exps)
    assert len(eng.trained) == 3 + n_target_models
    assert eng.predicted == len(exps)
    # (c) trains the head from the source model; (d) starts from scratch
    c = [t for t in eng.trained if t["trainable"] == "head"]
    assert c and all(Path(t["init"]).name == "source" for t in c)
    assert all(t["init"] is None for t in eng.trained if "/d_" in t["out"] or "source" in t["out"])
    preds = pd.read_parquet(out / "predictions.parquet")
    assert set(preds.columns) >= {"id", "task", "experiment", "seed", "n_train", "split", "label", "p"}
    assert len(preds.groupby(["task", "experiment", "n_train_target", "seed"])) == len(exps)

    # interrupted run: one experiment's results and one model lost -> only those are redone
    victim = next(e for e in exps if e.name == "b")
    (study.StudyPaths(out).experiment(victim) / "done.json").unlink()
    other = next(e for e in exps if e.name == "d" and e.key != victim.key)
    import shutil

    shutil.rmtree(study.StudyPaths(out).experiment(other))
    shutil.rmtree(study.StudyPaths(out).model(other))
    eng2 = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng2)
    res2 = study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, progress=False, report=False)
    assert [Path(t["out"]).name for t in eng2.trained] == [other.key.split("/")[1]]
    assert eng2.predicted == 2  # the victim's model existed: predicted again, not retrained
    assert res2.skipped == 3 + len(exps) - 2
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "predictions.parquet").sort_values(["task", "experiment", "n_train_target", "seed", "id"]).reset_index(drop=True),
        preds.sort_values(["task", "experiment", "n_train_target", "seed", "id"]).reset_index(drop=True),
    )
    # a different configuration in the same folder is refused
    cfg2 = tiny_config(sweep={"n_train": [10], "seeds": [0]})
    with pytest.raises(InputError, match="different configuration"):
        study.run_study(out=out, source=pair[0], target=pair[1], config=cfg2, progress=False, report=False)
    # so is a folder made by another study engine (its finished steps would be reused as they are)
    assert tomllib.loads((out / "config.toml").read_text())["inputs"]["engine_version"] == study.STUDY_ENGINE_VERSION
    v = study.STUDY_ENGINE_VERSION
    monkeypatch.setattr(study, "STUDY_ENGINE_VERSION", v + 1)
    with pytest.raises(InputError, match=rf"study engine version {v}, this morphtransfer runs version {v + 1}.*Delete the run folder"):
        study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, progress=False, report=False)


def test_source_only_runs_only_the_zero_rows(pair, tmp_path, monkeypatch):
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    res = study.run_study(out=tmp_path / "r", source=pair[0], config=tiny_config(), progress=False, report=False)
    assert [e.key for e in res.experiments] == ["Q1/0", "Q2/0", "Q3/0"]
    assert len(eng.trained) == 3
    assert any("source Store only" in n for n in res.notes)


class PlateauEngine(FakeEngine):
    """A FakeEngine whose Q3 source model ends on the loss plateau, as the engine cards it."""

    def train_model(self, store, task, **kw):
        out = super().train_model(store, task, **kw)
        if task == "Q3" and kw["init"] is None and "source" in str(out):
            card = json.loads((out / "card.json").read_text())
            card.update(left_plateau=False, best_val_loss=0.6908, chance_val_loss=0.6931, val_auc=0.594)
            (out / "card.json").write_text(json.dumps(card))
        return out


def test_a_source_model_left_on_the_loss_plateau_is_said_and_noted(pair, tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(study, "_engine", lambda: PlateauEngine())
    console = Console(record=True, width=200)
    out = tmp_path / "run"
    res = study.run_study(out=out, source=pair[0], target=pair[1], config=tiny_config(),
                          progress=False, report=False, console=console)
    notes = [n for n in res.notes if "loss plateau" in n]
    # the Q3 source model only: the other cards carry no plateau flag
    assert len(notes) == 1 and notes[0].startswith("Q3 source model did not leave the loss plateau")
    assert "0.6908" in notes[0] and "0.6931" in notes[0] and "0.594" in notes[0]
    assert "Q3 source model did not leave the loss plateau" in console.export_text()
    # a resumed run says it again: the model is reused, and what it rests on is unchanged
    res2 = study.run_study(out=out, source=pair[0], target=pair[1], config=tiny_config(),
                           progress=False, report=False, console=Console(record=True, width=200))
    assert [n for n in res2.notes if "loss plateau" in n] == notes
    # `morphtransfer report` says it again from the card, with no metrics.json to copy it from
    assert not (out / "metrics.json").exists()
    study.report_run(out, console=Console(record=True, width=200))
    assert [n for n in json.loads((out / "metrics.json").read_text())["notes"] if "loss plateau" in n] == notes


def test_small_samples_get_at_least_min_steps(monkeypatch):
    monkeypatch.setattr(study, "_engine", lambda: FakeEngine())
    cfg = tiny_config()
    cfg["recipe"]["target"] = {"max_epochs": 8, "min_steps": 60, "batch_size": 30}
    # 50 galaxies, 45 after validation: 2 steps per epoch -> 30 epochs; 300 -> 9 steps -> 8 epochs
    assert study.make_recipe(cfg, "target", 50, 0, "Q1")["max_epochs"] == 30
    assert study.make_recipe(cfg, "target", 300, 0, "Q1")["max_epochs"] == 8
    # and early stopping waits for them (train.Recipe.min_steps)
    assert study.make_recipe(cfg, "target", 300, 0, "Q1")["min_steps"] == 60
    assert study.make_recipe(cfg, "target", 300, 0, "Q3")["balance_classes"] is True
    assert study.make_recipe(cfg, "target", 300, 3, "Q1")["seed"] == 3


def test_max_epochs_per_task(monkeypatch):
    monkeypatch.setattr(study, "_engine", lambda: FakeEngine())
    cfg = tiny_config()
    cfg["recipe"]["source"] = {"max_epochs": {"Q1": 10, "Q3": 6}, "batch_size": 30}
    epochs = [study.make_recipe(cfg, "source", 3000, 0, t)["max_epochs"] for t in ("Q1", "Q2", "Q3")]
    assert epochs == [10, 50, 6]  # a task not in the table: 50, the engine's default
    # min_steps still raises a per-task value (50 galaxies: 2 steps per epoch -> 30 epochs)
    cfg["recipe"]["target"] = {"max_epochs": {"Q3": 4}, "min_steps": 60, "batch_size": 30}
    assert study.make_recipe(cfg, "target", 50, 0, "Q3")["max_epochs"] == 30
    assert study.make_recipe(cfg, "target", 300, 0, "Q3")["max_epochs"] == 7
    # and the quick preset uses it for the SDSS bar model
    quick = study.load_config("quick")
    assert study.make_recipe(quick, "source", 3000, 0, "Q3")["max_epochs"] == 6
    assert study.make_recipe(quick, "source", 1000, 0, "Q1")["max_epochs"] == 10


def test_fine_tunes_get_their_own_learning_rate_and_scratch_keeps_the_base_one(pair, tmp_path, monkeypatch):
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    cfg = tiny_config()
    cfg["recipe"]["source"]["learning_rate"] = 1e-3
    cfg["recipe"]["target"].update({"learning_rate": 1e-3, "fine_tune_learning_rate": 1e-4})
    study.run_study(out=tmp_path / "r", source=pair[0], target=pair[1], config=cfg, progress=False, report=False)
    by_kind = {"b": set(), "c": set(), "d": set(), "source": set()}
    for t in eng.trained:
        kind = Path(t["out"]).name.split("_")[0]
        by_kind[kind].add(t["recipe"]["learning_rate"])
        assert "fine_tune_learning_rate" not in t["recipe"]  # not a train.Recipe field
    assert by_kind == {"b": {1e-4}, "c": {1e-4}, "d": {1e-3}, "source": {1e-3}}
    # without the key, all three use learning_rate (the published study's single value)
    assert study.make_recipe(tiny_config(), "target", 40, 0, "Q1", fine_tune=True).get("learning_rate") is None
    assert study.make_recipe(cfg, "target", 40, 0, "Q1", fine_tune=False)["learning_rate"] == 1e-3
    # per task: a task not in the table keeps learning_rate
    cfg["recipe"]["target"].update({"learning_rate": 1e-3, "fine_tune_learning_rate": {"Q1": 1e-4, "Q3": 3e-4}})
    lrs = [study.make_recipe(cfg, "target", 40, 0, t, fine_tune=True)["learning_rate"] for t in ("Q1", "Q2", "Q3")]
    assert lrs == [1e-4, 1e-3, 3e-4]


def test_any_recipe_field_may_be_given_per_task(monkeypatch):
    monkeypatch.setattr(study, "_engine", lambda: FakeEngine())
    cfg = tiny_config()
    cfg["recipe"]["source"] = {"learning_rate": {"Q1": 1e-3, "Q3": 1e-4}, "batch_size": {"Q3": 16},
                               "max_epochs": 3}
    recipes = [study.make_recipe(cfg, "source", 3000, 0, t) for t in ("Q1", "Q2", "Q3")]
    assert [r.get("learning_rate") for r in recipes] == [1e-3, None, 1e-4]  # Q2: the engine's default
    assert [r.get("batch_size") for r in recipes] == [None, None, 16]
    # a per-task batch size sets the steps per epoch that min_steps counts (270 / 16 -> 17)
    cfg["recipe"]["target"] = {"max_epochs": 1, "min_steps": 170, "batch_size": {"Q3": 16},
                               "learning_rate": {"Q3": 2e-4}, "fine_tune_learning_rate": {"Q1": 1e-5}}
    assert study.make_recipe(cfg, "target", 300, 0, "Q3")["max_epochs"] == 10
    assert study.make_recipe(cfg, "target", 300, 0, "Q1")["max_epochs"] == 19  # the default 30: 9 steps
    # fine-tunes: fine_tune_learning_rate where it names the task, else the task's learning_rate
    assert study.make_recipe(cfg, "target", 300, 0, "Q1", fine_tune=True)["learning_rate"] == 1e-5
    assert study.make_recipe(cfg, "target", 300, 0, "Q3", fine_tune=True)["learning_rate"] == 2e-4
    cfg["recipe"]["target"]["min_steps"] = {"Q3": 170}  # min_steps too: Q1 then has none
    assert [study.make_recipe(cfg, "target", 300, 0, t)["max_epochs"] for t in ("Q1", "Q3")] == [1, 10]


def test_config_round_trips_through_toml():
    import tomllib

    cfg = study.load_config("quick")
    assert tomllib.loads(study._to_toml(cfg)) == cfg


def test_run_command_reports_bad_input_without_traceback(tmp_path, monkeypatch, capsys):
    import sys

    from morphtransfer import cli

    monkeypatch.setattr(sys, "argv", ["morphtransfer", "run", "--preset", "huge", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    monkeypatch.setattr(sys, "argv", ["morphtransfer", "run", "--target", str(tmp_path), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    monkeypatch.setattr(sys, "argv", ["morphtransfer", "run", "--target-votes", "sdss", "--out", str(tmp_path / "r2")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    # the message names the config section; it is not swallowed as console markup
    assert "[labels] target_votes = 'sdss' unknown" in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "r2").exists()  # refused before anything is written
    monkeypatch.setattr(sys, "argv", ["morphtransfer", "run", "--precision", "fp8", "--out", str(tmp_path / "r3")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert "unknown precision 'fp8'" in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "r3").exists()


def test_same_galaxy_under_another_id_is_kept_out_of_source_training(pair):
    src, tgt = Store(pair[0]), Store(pair[1])
    cfg = tiny_config()
    rng = np.random.default_rng(1)
    s_cat = study.prepare_catalog(src.catalog).assign(
        ra=rng.uniform(0, 10, len(src.catalog)), dec=rng.uniform(-1, 1, len(src.catalog)))
    # the target names every galaxy differently; positions agree within 0.3 arcsec
    t_cat = study.prepare_catalog(tgt.catalog).assign(
        id=lambda d: "des_" + d["id"].astype(str),
        ra=s_cat["ra"].to_numpy() + 0.3 / 3600, dec=s_cat["dec"].to_numpy())
    sp = study.make_splits(s_cat, t_cat, "Q1", cfg)
    test_src_ids = {i[len("des_"):] for i in sp[sp["role"] == "target_test"]["id"]}
    train = set(sp[sp["role"] == "source_train"]["id"])
    assert test_src_ids and not train & test_src_ids
    # without positions the ids alone cannot tell, and the overlap is there
    sp2 = study.make_splits(s_cat.drop(columns=["ra", "dec"]), t_cat.drop(columns=["ra", "dec"]), "Q1", cfg)
    test2 = {i[len("des_"):] for i in sp2[sp2["role"] == "target_test"]["id"]}
    assert set(sp2[sp2["role"] == "source_train"]["id"]) & test2


def test_target_votes_source_labels_target_galaxies_with_the_source_volunteers(pair, tmp_path, monkeypatch):
    """The study's design: DES galaxies carry the Galaxy Zoo (SDSS) label of the same galaxy."""
    src, tgt = Store(pair[0]), Store(pair[1])
    cfg = tiny_config()
    cfg["labels"]["target_votes"] = "source"
    s_cat, t_cat = study.prepare_catalog(src.catalog), study.prepare_catalog(tgt.catalog)
    s_lab = study.task_labels(s_cat, "Q3", cfg["labels"]).set_axis(s_cat["id"].astype(str))
    t_lab = study.task_labels(t_cat, "Q3", cfg["labels"]).set_axis(t_cat["id"].astype(str))
    assert (s_lab != t_lab).sum() > 20  # the two surveys' volunteers disagree on bars
    sp = study.make_splits(s_cat, t_cat, "Q3", cfg)
    tgt_rows = sp[sp["survey"] == "target"]
    assert len(tgt_rows) == int((s_lab >= 0).sum())  # exactly the source-robust galaxies
    assert (tgt_rows["label"].to_numpy() == s_lab[tgt_rows["id"]].to_numpy()).all()
    # another naming of the same galaxies: matched by position (within 1 arcsec), else unlabelled
    rng = np.random.default_rng(1)
    s_pos = s_cat.assign(ra=rng.uniform(0, 10, len(s_cat)), dec=rng.uniform(-1, 1, len(s_cat)))
    shift = np.where(np.arange(len(s_cat)) < 50, 5.0, 0.3) / 3600  # the first 50 are 5" away
    t_pos = t_cat.assign(id="des_" + t_cat["id"].astype(str), ra=s_pos["ra"].to_numpy() + shift,
                         dec=s_pos["dec"].to_numpy())
    lab = study._source_labels_for(t_pos, s_pos, s_lab.to_numpy())
    assert (lab[:50] == -1).all()
    assert (lab[50:] == s_lab.to_numpy()[50:]).all()
    cfg["labels"]["target_votes"] = "des"
    with pytest.raises(InputError, match="target_votes"):
        study.make_splits(s_cat, t_cat, "Q3", cfg)
    # a target Store without any votes runs the whole study on the source's labels
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    bare = tmp_path / "des_bare"
    from morphtransfer.data.store import StoreWriter

    w = StoreWriter(bare, survey="des", bands=["g", "r", "i"])
    w.append(tgt.catalog[["id", "survey"]], tgt.read_images(tgt.catalog["image_index"].to_numpy()))
    cfg["labels"]["target_votes"] = "source"
    res = study.run_study(out=tmp_path / "r", source=pair[0], target=bare, config=cfg,
                          progress=False, report=False)
    assert {e.task for e in res.experiments} == {"Q1", "Q2", "Q3"}
    preds = pd.read_parquet(tmp_path / "r" / "predictions.parquet")
    a = preds[(preds["task"] == "Q3") & (preds["experiment"] == "a")]
    assert (a["label"].to_numpy() == s_lab[a["id"].astype(str)].to_numpy()).all()
    # the table says whose labels it was scored against
    from morphtransfer.report import write_report

    write_report(tmp_path / "r", cfg)
    assert "SDSS volunteers' label of the same galaxy" in (tmp_path / "r" / "table2.md").read_text()


def test_simulated_pair_of_another_simulator_version_is_refused(tmp_path):
    """A run folder simulated by another simulator version is not silently reused."""
    import json

    from rich.console import Console

    from morphtransfer.errors import InputError
    from morphtransfer.simulate.pipeline import SIMULATOR_VERSION
    from morphtransfer.study import _ensure_simulated, load_config

    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    (data / "simulated.json").write_text(json.dumps({"n_galaxies": 10, "seed": 0}))  # version 1
    with pytest.raises(InputError, match="simulator version 1"):
        _ensure_simulated(data, load_config("quick"), Console(quiet=True), 10)
    (data / "simulated.json").write_text(
        json.dumps({"n_galaxies": 10, "seed": 0, "simulator_version": SIMULATOR_VERSION}))
    _ensure_simulated(data, load_config("quick"), Console(quiet=True), 10)  # found: no simulation
    assert not (data / "sdss").exists()


def test_several_source_seeds_give_the_zero_and_a_rows_a_spread(pair, tmp_path, monkeypatch):
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    cfg = tiny_config(sweep={"n_train": [], "seeds": []})
    cfg["study"]["source_seeds"] = [0, 5]
    cfg["study"]["seeds"] = [0, 1, 2]
    out = tmp_path / "run"
    res = study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, progress=False, report=False)
    keys = [e.key for e in res.experiments if e.task == "Q1"]
    assert keys[:4] == ["Q1/0", "Q1/0_s5", "Q1/a", "Q1/a_s5"]
    # two source models per task, each trained with its own seed on the same SDSS galaxies
    src = [t for t in eng.trained if t["init"] is None and "/source" in t["out"]]
    assert sorted(Path(t["out"]).name for t in src if t["task"] == "Q1") == ["source", "source_s5"]
    q1 = {Path(t["out"]).name: t for t in src if t["task"] == "Q1"}
    assert (q1["source"]["recipe"]["seed"], q1["source_s5"]["recipe"]["seed"]) == (0, 5)
    assert q1["source"]["ids"] == q1["source_s5"]["ids"]
    # b and c of seed s start from source model source_seeds[s % 2]: seeds 0, 2 -> 0; seed 1 -> 5
    starts = {Path(t["out"]).name: Path(t["init"]).name for t in eng.trained
              if t["task"] == "Q1" and t["init"] is not None}
    n = cfg["target"]["n_train"]["Q1"]
    assert starts[f"b_n{n}_s0"] == "source" and starts[f"c_n{n}_s2"] == "source"
    assert starts[f"b_n{n}_s1"] == "source_s5" and starts[f"c_n{n}_s1"] == "source_s5"
    # the (0) rows are tested once per source model and aggregate to a mean with a spread
    from morphtransfer.report import tables

    preds = pd.read_parquet(out / "predictions.parquet")
    zero = preds[(preds["task"] == "Q1") & (preds["experiment"] == "0")]
    assert sorted(zero["seed"].unique()) == [0, 5]
    agg = tables.aggregate(tables.compute_metrics(preds, n_boot=20))
    row = agg[(agg["task"] == "Q1") & (agg["experiment"] == "0")].iloc[0]
    assert row["n_seeds"] == 2
    per_seed = [tables.compute_metrics(zero[zero["seed"] == s], n_boot=20)[0]["auc"] for s in (0, 5)]
    assert row["auc"] == pytest.approx(np.mean(per_seed))
    assert per_seed[0] != per_seed[1]
    assert row["auc_std"] == pytest.approx(np.std(per_seed, ddof=1))
    # timings.jsonl keeps the estimate beside the real time (no [estimate] reference: factor 1)
    logged = json.loads((out / "timings.jsonl").read_text().splitlines()[-1])
    assert logged["speed_factor"] == 1.0 and logged["total_s"] == res.timings["total_s"]
    splits = pd.read_parquet(out / "splits.parquet")
    n_test = splits[splits["role"] == "target_test"].groupby("task").size()
    jobs = [study.SourceJob(t, s) for t in sorted(n_test.index) for s in (0, 5)]
    expect = sum(study.job_seconds(cfg, j, 0) for j in jobs) + sum(
        study.job_seconds(cfg, e, int(n_test[e.task])) for e in res.experiments) + 20.0
    assert logged["estimated_total_s"] == pytest.approx(expect, abs=0.06)
    # the estimate counts one source training per source seed
    one = study.estimate_seconds({**cfg, "study": {**cfg["study"], "source_seeds": [0]}}, res.experiments)
    two = study.estimate_seconds(cfg, res.experiments)
    assert two["source_models_s"] == pytest.approx(2 * one["source_models_s"])
    with pytest.raises(InputError, match="source_seeds"):
        study.source_seeds({"study": {"source_seeds": [1, 1]}})


def test_the_time_estimate_scales_with_this_machines_conv_rate(monkeypatch):
    """The printed estimate is the presets' [estimate] speeds, measured on one machine, scaled by
    this machine's float32 convolution rate over that machine's (training is bound by it)."""
    import torch

    from morphtransfer import inference, speed

    cfg = study.load_config("quick")
    plan, _ = study.plan_experiments(cfg, list(cfg["study"]["tasks"]))
    base = study.estimate_seconds(cfg, plan, 12000)
    assert base["simulate_s"] == pytest.approx(12000 / 27.5)  # the speeds as measured
    twice = study.estimate_seconds(study.with_speed(cfg, 2.0), plan, 12000)
    assert twice["simulate_s"] == pytest.approx(base["simulate_s"] / 2)
    fixed = 3 * study.FIT_OVERHEAD_S  # one source model per task: a fixed setup cost each
    assert twice["source_models_s"] == pytest.approx((base["source_models_s"] - fixed) / 2 + fixed)
    n_exp = len(plan)  # each: at most a fit's setup and 1 s of loading, unscaled
    assert base["experiments_s"] / 2 < twice["experiments_s"] <= (
        base["experiments_s"] / 2 + n_exp * (study.FIT_OVERHEAD_S + 1.0))
    assert "speed_factor" not in cfg["estimate"]  # with_speed copies
    # the real probe on this machine, against the preset's reference of 145 GFLOP/s
    factor, how = study.machine_speed(cfg)
    gflops = float(re.search(r"at (\d+) GFLOP/s in a float32 conv", how).group(1))
    assert gflops > 1.0 and factor * 145.0 == pytest.approx(gflops, abs=0.5)
    monkeypatch.setattr(speed, "conv_gflops", lambda **kw: (290.0, 290.0))
    factor, how = study.machine_speed(cfg)
    assert factor == pytest.approx(2.0) and "290 GFLOP/s" in how and "against 145" in how
    # no reference: the speeds as they are, no probe; a GPU: the CPU speeds are an upper bound
    no_ref = {**cfg, "estimate": {k: v for k, v in cfg["estimate"].items()
                                  if k != "reference_conv_gflops"}}
    monkeypatch.setattr(speed, "conv_gflops", lambda **kw: pytest.fail("probed"))
    assert study.machine_speed(no_ref)[0] == 1.0
    monkeypatch.setattr(inference, "default_device", lambda: torch.device("cuda"))
    factor, how = study.machine_speed(cfg)
    assert factor == 1.0 and "upper bound" in how


def test_the_estimate_scales_training_by_the_precision_measured_here(monkeypatch):
    """The [estimate] training speed is float32's: a recipe that trains in bf16-mixed ("auto"
    where bfloat16 is native) has its trainings estimated at the speed-up a DS18 training-step
    probe measures here, in both precisions; float32 alone probes nothing."""
    import torch

    from morphtransfer import inference, speed

    cfg = study.load_config("quick")
    fp32 = {**cfg, "recipe": {w: {**r, "precision": "32-true"} for w, r in cfg["recipe"].items()}}
    monkeypatch.setattr(speed, "train_step_speedup", lambda *a, **kw: pytest.fail("probed"))
    assert study.precision_speedups(fp32) == ({}, "")
    monkeypatch.setattr(speed, "train_step_speedup", lambda precision, **kw: {"bf16-mixed": 1.5}[precision])
    bf16 = {**cfg, "recipe": {**cfg["recipe"], "source": {**cfg["recipe"]["source"],
                                                          "precision": "bf16-mixed"}}}
    bf16["recipe"]["target"] = {**cfg["recipe"]["target"], "precision": "32-true"}
    factors, how = study.precision_speedups(bf16)
    assert factors == {"bf16-mixed": pytest.approx(1.5)} and "bf16-mixed training 1.50x float32" in how
    plan, _ = study.plan_experiments(bf16, list(bf16["study"]["tasks"]))
    base = study.estimate_seconds(study.with_speed(fp32, 1.0), plan, 0)
    est = study.estimate_seconds(study.with_speed(bf16, 1.0, factors), plan, 0)
    fixed = 3 * study.FIT_OVERHEAD_S
    assert est["source_models_s"] - fixed == pytest.approx((base["source_models_s"] - fixed) / 1.5)
    assert est["experiments_s"] == pytest.approx(base["experiments_s"])  # target stays float32
    # "auto" is bf16-mixed exactly where bfloat16 is native
    auto = {**cfg, "recipe": {w: {**r, "precision": "auto"} for w, r in cfg["recipe"].items()}}
    monkeypatch.setattr(inference, "bf16_supported", lambda device="cpu": False)
    assert study.precision_speedups(auto) == ({}, "")
    monkeypatch.setattr(inference, "bf16_supported", lambda device="cpu": True)
    assert study.precision_speedups(auto)[0] == {"bf16-mixed": pytest.approx(1.5)}
    # on a GPU the CPU probe says nothing
    monkeypatch.setattr(inference, "default_device", lambda: torch.device("cuda"))
    assert study.precision_speedups(auto) == ({}, "")


def test_the_training_step_probe_trains_ds18_in_each_precision(monkeypatch):
    """speed.train_step_speedup runs real DS18 training steps (augmentation, forward, backward,
    Adam) in float32 and bf16-mixed (autocast, on any CPU) and reports the median of their
    alternating step-time ratios."""
    from morphtransfer import speed

    ratio = speed.train_step_speedup("bf16-mixed", pairs=1, batch=8, warmup=0)
    assert math.isfinite(ratio) and 0.01 < ratio < 100
    # the median of the pairs' ratios: fake step times 2, 1 | 2, 4 | 3, 1 s -> ratios 2, 0.5, 3
    times = iter([2.0, 1.0, 2.0, 4.0, 3.0, 1.0])
    monkeypatch.setattr(speed, "_train_step", lambda precision, batch=30: (lambda: None))
    monkeypatch.setattr(speed, "_timed", lambda step: next(times))
    assert speed.train_step_speedup("bf16-mixed", pairs=3, warmup=0) == pytest.approx(2.0)


def test_simulation_workers_auto_is_one_per_core_and_a_resume_may_change_them(pair, tmp_path, monkeypatch):
    """[simulate] workers = "auto" (the presets): one rendering process per usable core, at most
    MAX_AUTO_WORKERS; a number is taken as it is; the workers do not change the galaxies, so a
    run folder resumes with another setting."""
    import os

    for name in ("quick", "paper"):
        assert study.load_config(name)["simulate"]["workers"] == "auto"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert study.simulation_workers("auto") == 3 and study.simulation_workers(None) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert study.simulation_workers("auto") == study.MAX_AUTO_WORKERS == 8
    assert study.simulation_workers(5) == 5 and study.simulation_workers("0") == 0
    # the study's simulation step renders with them
    from rich.console import Console

    seen = []
    monkeypatch.setattr(study, "_simulate", lambda n, seed, out, workers, surveys: seen.append(workers))
    study._ensure_simulated(tmp_path / "d", study.load_config("quick"), Console(quiet=True), 6)
    assert seen == [8]
    for bad in ("many", -1):
        with pytest.raises(InputError, match="workers"):
            study.simulation_workers(bad)
    monkeypatch.setattr(study, "_engine", lambda: FakeEngine())
    cfg = tiny_config(sweep={"n_train": [], "seeds": []})
    cfg["simulate"] = {"workers": 2}
    study.run_study(out=tmp_path / "r", source=pair[0], target=pair[1], config=cfg, progress=False, report=False)
    cfg["simulate"] = {"workers": "auto"}
    res = study.run_study(out=tmp_path / "r", source=pair[0], target=pair[1], config=cfg, progress=False, report=False)
    assert res.trained == 0 and res.skipped > 0  # resumed, nothing redone
    cfg["simulate"] = {"workers": "auto", "seed": 3}  # but a setting that changes results is refused
    with pytest.raises(InputError, match="different configuration"):
        study.run_study(out=tmp_path / "r", source=pair[0], target=pair[1], config=cfg, progress=False, report=False)


def test_the_printed_estimate_names_the_probe_and_uses_its_speed(tmp_path, monkeypatch):
    """The start line of a simulated run: the estimate at this machine's measured speed, with
    the probe's figures (markup-escaped: '[estimate]' is printed, not eaten by rich)."""
    from rich.console import Console

    from morphtransfer import speed

    class Stop(Exception):
        pass

    def stop(*a, **kw):
        raise Stop

    from morphtransfer import inference

    monkeypatch.setattr(speed, "conv_gflops", lambda **kw: (290.0, 290.0))  # 2x the reference
    # the quick preset trains in "auto" precision: bf16-mixed here, 1.5x float32's speed
    monkeypatch.setattr(inference, "bf16_supported", lambda device="cpu": True)
    monkeypatch.setattr(speed, "train_step_speedup", lambda precision, **kw: {"bf16-mixed": 1.5}[precision])
    monkeypatch.setattr(study, "_ensure_simulated", stop)
    cfg = study.load_config("quick")
    plan, _ = study.plan_experiments(cfg, list(cfg["study"]["tasks"]))
    n_test = {t: study._per_task(cfg["target"]["n_test"], t, "n_test") for t in cfg["study"]["tasks"]}
    expect = study.estimate_seconds(study.with_speed(cfg, 2.0, {"bf16-mixed": 1.5}), plan, 12000, n_test)
    assert expect["total_s"] < study.estimate_seconds(study.with_speed(cfg, 2.0), plan, 12000, n_test)["total_s"]
    console = Console(record=True, width=300)
    with pytest.raises(Stop):
        study.run_study(out=tmp_path / "r", config=cfg, console=console, progress=False)
    line = console.export_text()
    assert f"estimated time ~{expect['total_s'] / 60:.0f} min" in line
    assert f"simulation {12000 / 55.0 / 60:.1f}," in line  # 27.5/s x 2
    assert "at 290 GFLOP/s in a float32 conv, against 145 where the [estimate] speeds" in line
    assert "bf16-mixed training 1.50x float32 here" in line


def test_target_votes_default_follows_the_data_and_a_run_folder_keeps_its_labelling(pair, tmp_path, monkeypatch):
    """Unset: 'source' on the built-in simulated pair (the study's design), 'target' on users'
    Stores; the resolved value is in config.toml and a resume asking for the other is refused."""
    assert study.resolve_target_votes(tiny_config(), simulated=True)["labels"]["target_votes"] == "source"
    assert study.resolve_target_votes(tiny_config(), simulated=False)["labels"]["target_votes"] == "target"
    explicit = tiny_config()
    explicit["labels"]["target_votes"] = "target"
    assert study.resolve_target_votes(explicit, simulated=True)["labels"]["target_votes"] == "target"
    # --target-votes (run_study's target_votes) beats the preset
    assert study.resolve_target_votes(explicit, simulated=True, override="source")["labels"]["target_votes"] == "source"
    assert explicit["labels"]["target_votes"] == "target"
    explicit["labels"]["target_votes"] = "sdss"
    with pytest.raises(InputError, match="target_votes = 'sdss' unknown"):
        study.resolve_target_votes(explicit, simulated=True)

    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    # the simulated path, with the tiny pair standing in for the simulator's output
    import shutil

    def fake_simulated(data, cfg, console, n):
        for s in ("sdss", "des"):
            shutil.copytree(pair[0 if s == "sdss" else 1], data / s)

    monkeypatch.setattr(study, "_ensure_simulated", fake_simulated)
    cfg = tiny_config(simulate={"n_galaxies": 400})
    assert "target_votes" not in cfg["labels"]
    sim_out = tmp_path / "sim"
    study.run_study(out=sim_out, config=cfg, progress=False, report=False)
    assert tomllib.loads((sim_out / "config.toml").read_text())["labels"]["target_votes"] == "source"
    s_cat = study.prepare_catalog(Store(pair[0]).catalog)
    s_lab = study.task_labels(s_cat, "Q3", cfg["labels"]).set_axis(s_cat["id"].astype(str))
    preds = pd.read_parquet(sim_out / "predictions.parquet")
    a = preds[(preds["task"] == "Q3") & (preds["experiment"] == "a")]
    assert len(a) and (a["label"].to_numpy() == s_lab[a["id"].astype(str)].to_numpy()).all()
    assert "target_votes" not in cfg["labels"]  # the caller's dict is left as it was

    # users' Stores: the target survey's own votes
    own = tmp_path / "own"
    study.run_study(out=own, source=pair[0], target=pair[1], config=tiny_config(), progress=False, report=False)
    assert tomllib.loads((own / "config.toml").read_text())["labels"]["target_votes"] == "target"
    # resuming with the other labelling is refused, naming both
    other = tiny_config()
    other["labels"]["target_votes"] = "source"
    with pytest.raises(InputError, match=r"labelled by the target survey's volunteers.*asks for 'source'.*--target-votes target"):
        study.run_study(out=own, source=pair[0], target=pair[1], config=other, progress=False, report=False)
    # a folder written before the key existed was labelled 'target': it resumes as before
    text = (own / "config.toml").read_text().replace('target_votes = "target"\n', "")
    (own / "config.toml").write_text(text)
    assert "target_votes" not in tomllib.loads(text)["labels"]
    n_before = len(eng.trained)
    study.run_study(out=own, source=pair[0], target=pair[1], config=tiny_config(), progress=False, report=False)
    assert len(eng.trained) == n_before  # everything was finished: nothing retrained


def test_run_precision_overrides_both_recipes_and_a_resume_keeps_it(pair, tmp_path, monkeypatch):
    """`morphtransfer run --precision P` (run_study's precision): every training, source and
    target, in P; config.toml keeps it, so a resume asking for another precision is refused
    rather than mixing models of two precisions; an unknown name is refused before anything runs."""
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    cfg = tiny_config(sweep={"n_train": [], "seeds": []})
    cfg["study"]["seeds"] = [0]
    out = tmp_path / "run"
    study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, precision="bf16-mixed",
                    progress=False, report=False)
    assert len(eng.trained) == 3 + 3 * 3  # an SDSS model and (b), (c), (d) per task
    assert {t["recipe"]["precision"] for t in eng.trained} == {"bf16-mixed"}
    written = tomllib.loads((out / "config.toml").read_text())["recipe"]
    assert written["source"]["precision"] == written["target"]["precision"] == "bf16-mixed"
    assert "precision" not in cfg["recipe"]["source"]  # the caller's dict is left alone
    with pytest.raises(InputError, match=r"recipe.source.precision: 'bf16-mixed' there, '32-true' now; "
                       r"recipe.target.precision: .*the same preset and inputs \(here: --precision bf16-mixed\)"):
        study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, precision="32-true",
                        progress=False, report=False)
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        study.run_study(out=tmp_path / "other", source=pair[0], target=pair[1], config=cfg,
                        precision="fp8", progress=False, report=False)
    assert not (tmp_path / "other").exists()


def test_0t_matches_the_target_test_galaxies_by_position_when_the_stores_name_them_differently(
        tmp_path, monkeypatch):
    """Two real Stores of the same galaxies (SDSS objIDs, DES coadd ids): (0t) finds each DES test
    galaxy's SDSS image within 1 arcsec, scores it under the DES id with the DES test label, and
    the SDSS model never trained on any of them. Without positions there is nothing to pair."""
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    src, tgt = make_pair(tmp_path / "data", n=400, positions=True, target_id_prefix="des")
    cfg = tiny_config(sweep={"n_train": [], "seeds": []})
    cfg["study"]["seeds"] = [0]
    cfg["labels"]["target_votes"] = "target"
    out = tmp_path / "run"
    res = study.run_study(out=out, source=src, target=tgt, config=cfg, progress=False, report=False)
    assert sorted(e.key for e in res.experiments if e.name == "0t") == ["Q1/0t", "Q2/0t", "Q3/0t"]
    preds = pd.read_parquet(out / "predictions.parquet")
    splits = pd.read_parquet(out / "splits.parquet")
    for task in ("Q1", "Q2", "Q3"):
        pt = preds[preds["task"] == task]
        p0t, pa = (pt[pt["experiment"] == e].set_index("id") for e in ("0t", "a"))
        assert len(p0t) == len(pa) > 0 and set(p0t.index) == set(pa.index)
        assert all(i.startswith("des") for i in p0t.index)
        assert (p0t.loc[pa.index, "label"] == pa["label"]).all()
        assert set(p0t["survey"]) == {"sdss"}
        # the SDSS galaxies it scored (g<n> for des<n>) were not in the SDSS model's training set
        train = set(splits[(splits["task"] == task) & (splits["role"] == "source_train")]["id"])
        assert not {"g" + i[3:] for i in p0t.index} & train
    # every planned experiment, the three (0t) included, was scored once
    assert eng.predicted == len(res.experiments)

    src2, tgt2 = make_pair(tmp_path / "data2", n=400, positions=False, target_id_prefix="des")
    res2 = study.run_study(out=tmp_path / "run2", source=src2, target=tgt2, config=cfg,
                           progress=False, report=False)
    assert not [e for e in res2.experiments if e.name == "0t"]


def test_paired_source_ids_same_id_first_then_position():
    tgt = pd.DataFrame({"id": ["a", "x", "y", "z"], "ra": [1.0, 2.0, 3.0, np.nan],
                        "dec": [0.0, 0.0, 0.0, 0.0]})
    src = pd.DataFrame({"id": ["a", "s2", "s3"], "ra": [5.0, 2.0 + 0.5 / 3600, 3.0 + 2.0 / 3600],
                        "dec": [0.0, 0.0, 0.0]})
    # a: same id (although its position differs); x: 0.5" away; y: 2" away (too far); z: no position
    assert list(study.paired_source_ids(["a", "x", "y", "z"], tgt, src)) == ["a", "s2", "", ""]


def test_simulated_pair_target_survey_is_configurable_and_checked():
    assert study.simulated_pair({}) == ("sdss", "des")
    assert study.simulated_pair({"simulate": {"target_survey": "DES_DESaccess"}}) == ("sdss", "des_desaccess")
    for bad in ("sdss", "euclid"):
        with pytest.raises(InputError, match=rf"\[simulate\] target_survey = '{bad}' unknown; use one of "
                                             r"decals, des, des_desaccess"):
            study.simulated_pair({"simulate": {"target_survey": bad}})
    # the DES observations are the same in both: one random stream, so the same noise and votes
    from morphtransfer.simulate.pipeline import simulate_galaxy

    g = simulate_galaxy(0, 4, surveys=("des", "des_desaccess"))
    (row_l, img_l), (row_d, img_d) = g["des"], g["des_desaccess"]
    votes = [c for c in row_l if c.endswith("_count")]
    assert votes and all(row_l[c] == row_d[c] for c in votes)
    assert not np.allclose(img_l, img_d)  # the served products differ


def test_a_one_class_training_sample_is_skipped_with_a_note_and_the_run_goes_on(pair, tmp_path, monkeypatch):
    """A rare class in a small random sample (50 random DES galaxies hold ~2 bars, sometimes none)
    once ended the whole study with an error; now that row is left out, named in the notes."""
    eng = FakeEngine()
    monkeypatch.setattr(study, "_engine", lambda: eng)
    cfg = tiny_config(sweep={"n_train": [1, 10], "seeds": [0]})  # 1 galaxy: always one class
    out = tmp_path / "r"
    res = study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, progress=False)
    one = [e for e in res.experiments if e.trains and e.n_train == 1]
    assert len(one) == 9  # b, c, d for three tasks
    skipped = [n for n in res.notes if " not run: its 1 random " in n]
    assert sorted(n.split()[0] for n in skipped) == sorted(e.key for e in one)
    assert all("no classifier learns from one class" in n and 'sample = "balanced"' in n for n in skipped)
    assert not any(Path(t["out"]).name.endswith("_n1_s0") for t in eng.trained)
    trained_n10 = [t for t in eng.trained if Path(t["out"]).name.endswith("_n10_s0")]
    assert len(trained_n10) == 9  # the other sweep point ran
    preds = pd.read_parquet(out / "predictions.parquet")
    assert 1 not in set(preds["n_train_target"]) and 10 in set(preds["n_train_target"])
    # the report is written without the missing rows and keeps the notes
    assert (out / "table2.md").exists() and (out / "report.html").exists()
    assert len(json.loads((out / "metrics.json").read_text())["notes"]) >= 9
    assert "Q3/d_n1_s0 not run" in (out / "report.html").read_text()
    # resuming finds the same rows unrunnable and repeats the notes once each
    res2 = study.run_study(out=out, source=pair[0], target=pair[1], config=cfg, progress=False,
                           report=False)
    assert sum(" not run: its 1 random " in n for n in res2.notes) == 9
    # with every sweep point below the main N left out, the findings name the main N once
    out2 = tmp_path / "r2"
    study.run_study(out=out2, source=pair[0], target=pair[1], progress=False,
                    config=tiny_config(sweep={"n_train": [1], "seeds": [0]}))
    found = json.loads((out2 / "metrics.json").read_text())["findings"]
    assert found and all(r["n_train_smallest"] == 0 and r["n_train_main"] > 1 for r in found)
    lines = study._findings_lines(out2 / "metrics.json")
    assert lines and not any(line.count(" at N=") > 1 for line in lines)
