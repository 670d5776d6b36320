"""The report: numbers from predictions.parquet, Table 2's structure, figures with their CSVs,
and a small end-to-end study with the real training engine (few galaxies, one epoch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from study_helpers import make_pair, tiny_config

from morphtransfer import metrics, study
from morphtransfer.report import write_report
from morphtransfer.report.tables import (
    aggregate,
    budget_markdown,
    claims,
    claims_lines,
    compute_metrics,
    findings,
    label_budget,
    n_to_reach_level,
    table2,
)


def _synthetic_predictions() -> pd.DataFrame:
    """Known answers: 8 test galaxies (4 positive); seed 0 perfect, seed 1 reversed."""
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    good = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    rows = []

    def add(task, exp, n_target, seed, p, n_train):
        rows.append(pd.DataFrame({"id": [f"g{i}" for i in range(8)], "task": task, "experiment": exp,
                                  "seed": seed, "n_train": n_train, "n_train_target": n_target,
                                  "split": "test", "label": y, "p": p, "truth": y.astype(float)}))

    add("Q1", "0", 0, 0, good, 1000)
    add("Q1", "a", 0, 0, np.where(y == 1, 0.45, 0.3), 1000)  # ranks right, all below P_th
    for n, p1 in ((50, 1 - good), (100, good)):
        for exp in ("b", "c", "d"):
            add("Q1", exp, n, 0, good, n)
            add("Q1", exp, n, 1, p1, n)
    return pd.concat(rows, ignore_index=True)


def test_table_numbers_from_known_predictions():
    preds = _synthetic_predictions()
    per_seed = compute_metrics(preds, p_threshold=0.5, n_boot=20)
    agg = aggregate(per_seed)
    a = agg[agg["experiment"] == "a"].iloc[0]
    assert a["auc"] == 1.0 and a["tpr"] == 0.0 and a["accuracy"] == 0.5 and math.isnan(a["precision"])
    b50 = agg[(agg["experiment"] == "b") & (agg["n_train_target"] == 50)].iloc[0]
    # seed 0 perfect (AUC 1), seed 1 reversed (AUC 0): mean 0.5, sample std 1/sqrt(2)
    assert b50["auc"] == 0.5 and b50["auc_std"] == pytest.approx(2**-0.5)
    assert b50["accuracy"] == 0.5 and b50["n_seeds"] == 2
    b100 = agg[(agg["experiment"] == "b") & (agg["n_train_target"] == 100)].iloc[0]
    assert b100["auc"] == 1.0 and b100["auc_std"] == 0.0
    assert b100["truth_volunteer_accuracy"] == 1.0
    t2 = table2(agg, {"Q1": 100})
    assert list(t2["experiment"]) == ["0", "a", "b", "c", "d"]
    assert list(t2.columns[:6]) == ["question", "experiment", "description", "n_train", "n_test", "n_pos"]
    assert {"tpr", "precision", "accuracy", "auc", "tpr_std", "auc_lo", "auc_hi"} <= set(t2.columns)
    reach = n_to_reach_level(label_budget(agg))
    assert reach == {"Q1": {"b": 100, "c": 100, "d": 100}}


def test_findings_measure_the_study_claims_from_table2():
    preds = _synthetic_predictions()
    # (d) at the main n = 100 ranks only partly right: 10 of 16 pairs -> AUC 0.625 on both seeds
    d_scores = np.array([0.9, 0.8, 0.35, 0.1, 0.7, 0.6, 0.3, 0.2])
    sel = (preds["experiment"] == "d") & (preds["n_train_target"] == 100)
    preds.loc[sel, "p"] = np.tile(d_scores, 2)
    auc_d = metrics.roc_auc(np.array([1, 1, 1, 1, 0, 0, 0, 0]), d_scores)
    assert auc_d == pytest.approx(0.625)
    agg = aggregate(compute_metrics(preds, p_threshold=0.5, n_boot=20))
    f = findings(table2(agg, {"Q1": 100}), label_budget(agg)).set_index("question").loc["Q1"]
    # (a): every positive below P_th -> TPR 1 -> 0; (b) at 100 is perfect like (0)
    assert f["tpr_a_minus_0"] == -1.0 and f["auc_b_minus_0"] == 0.0
    assert f["auc_b_minus_d"] == pytest.approx(1 - auc_d) and f["auc_b_minus_d_std"] == 0.0
    assert f["d_skill_fraction"] == pytest.approx((auc_d - 0.5) / 0.5)
    # at the smallest sweep n (50) b and d predicted the same: no gap
    assert f["n_train_smallest"] == 50 and f["auc_b_minus_d_smallest_n"] == 0.0
    assert f["d_flat_seeds_smallest_n"] == 0
    assert f["n_train_main"] == 100


def test_claims_say_which_questions_show_each_finding():
    """The three claims per question, from findings rows: the paper preset's version-5 numbers."""
    rows = [  # question, (a)-(0) TPR, precision, (b)-(0), (b)-(0t), (b)-(d) main, at 50, skill, flat
        ("Q1", -0.436, +0.061, -0.018, -0.015, +0.023, +0.007, 0.95, 0),
        ("Q2", -0.278, +0.044, +0.000, -0.004, +0.045, +0.103, 0.91, 0),
        ("Q3", -0.716, -0.039, -0.018, -0.027, +0.072, +0.121, 0.81, 0),
    ]
    cols = ["question", "tpr_a_minus_0", "precision_a_minus_0", "auc_b_minus_0", "auc_b_minus_0t",
            "auc_b_minus_d", "auc_b_minus_d_smallest_n", "d_skill_fraction", "d_flat_seeds"]
    found = pd.DataFrame(rows, columns=cols).assign(n_train_smallest=50, n_train_main=500)
    c = claims(found)
    assert c["a_loses"] == ["Q1", "Q2", "Q3"]
    assert c["b_near_0"] == ["Q1", "Q2", "Q3"] and c["b_near_0t"] == ["Q1", "Q2"]  # Q3 0.027 under
    assert c["b_beats_d"] == ["Q1", "Q2", "Q3"] and c["n_train_small"] == 50
    assert c["d_weakest"] == "Q3" and c["largest_gap_small_n"] == "Q3" and c["d_flat"] == []
    lines = claims_lines(c, ["Q1", "Q2", "Q3"])
    assert lines[0] == "(a) loses >= 0.02 of TPR or precision against (0): Q1, Q2, Q3 (3 of 3)"
    assert lines[1] == "(b) within 0.02 AUC of (0): Q1, Q2, Q3; of (0t), the same galaxies: Q1, Q2"
    assert lines[3] == ("(d) reaches the smallest part of (b)'s skill for Q3; the largest (b) - (d) "
                        "at N=50 is Q3's")
    # the quick run of session 13: Q2's (d) flat at 50 labels gives it the largest gap, and a run
    # without (0t) or a sweep says so
    found.loc[1, ["auc_b_minus_d_smallest_n", "d_flat_seeds_smallest_n"]] = [0.614, 1]
    found.loc[0, "tpr_a_minus_0"] = -0.01  # within the tolerance, and precision rose: no loss
    found["auc_b_minus_0t"], found["n_train_smallest"] = math.nan, 0
    c = claims(found)
    assert c["a_loses"] == ["Q2", "Q3"] and c["b_near_0t"] is None and c["n_train_small"] == 500
    assert c["d_flat"] == ["Q2"]  # flat at 50 labels only
    assert c["largest_gap_small_n"] == "Q3"  # no sweep: the main N's gaps, where Q3's is largest
    found["n_train_smallest"] = 50
    c = claims(found)
    assert c["largest_gap_small_n"] == "Q2" and c["d_flat"] == ["Q2"]
    assert claims_lines(c, ["Q1", "Q2", "Q3"])[3].endswith(
        "is Q2's (flat (d) seeds in Q2: that (d) stayed on the loss plateau or died)")
    assert claims(found.iloc[:0]) == {} and claims_lines({}, []) == []


def test_level_0t_the_same_galaxies_through_the_source_survey():
    """(0t) joins Table 2 between (0) and (a); the label budget is also read against it."""
    preds = _synthetic_predictions()
    partial = np.array([0.9, 0.8, 0.35, 0.1, 0.7, 0.6, 0.3, 0.2])  # AUC 10/16 = 0.625
    t0 = preds[(preds["experiment"] == "0")].copy()
    t0["experiment"], t0["p"] = "0t", partial
    # (b) at 50: seed 1 as partial as (0t) instead of reversed -> mean AUC (1 + 0.625) / 2
    sel = (preds["experiment"] == "b") & (preds["n_train_target"] == 50) & (preds["seed"] == 1)
    preds.loc[sel, "p"] = partial
    preds = pd.concat([preds, t0], ignore_index=True)
    agg = aggregate(compute_metrics(preds, p_threshold=0.5, n_boot=20))
    t2 = table2(agg, {"Q1": 100})
    assert list(t2["experiment"]) == ["0", "0t", "a", "b", "c", "d"]
    budget = label_budget(agg)
    assert (budget["auc_level_0t"] == 0.625).all() and (budget["auc_level_0"] == 1.0).all()
    assert n_to_reach_level(budget) == {"Q1": {"b": 100, "c": 100, "d": 100}}
    assert n_to_reach_level(budget, level="0t") == {"Q1": {"b": 50, "c": 100, "d": 100}}
    f = findings(t2, budget).iloc[0]
    assert f["auc_b_minus_0t"] == pytest.approx(1 - 0.625) and f["auc_a_minus_0t"] == pytest.approx(1 - 0.625)
    # a run without (0t) has no such level and reaches nothing against it
    agg0 = aggregate(compute_metrics(_synthetic_predictions(), p_threshold=0.5, n_boot=20))
    assert n_to_reach_level(label_budget(agg0), level="0t") == {}
    assert math.isnan(findings(table2(agg0, {"Q1": 100})).iloc[0]["auc_b_minus_0t"])


def _report_at_n100(preds: pd.DataFrame, run: Path) -> str:
    """Write the report of these predictions (main DES N_train 100) into run; its table2.md."""
    preds.to_parquet(run / "predictions.parquet", index=False)
    cfg = tiny_config()
    cfg["target"]["n_train"] = {"Q1": 100, "Q2": 100, "Q3": 100}
    write_report(run, cfg=cfg)
    return (run / "table2.md").read_text()


def test_flat_models_are_counted_and_named_in_table2(tmp_path):
    """A model whose P barely varies (stuck on the ln 2 plateau) is flagged, not taken at face value."""
    preds = _synthetic_predictions()
    sel = (preds["experiment"] == "d") & (preds["n_train_target"] == 100)
    # seed 0: P 0.4990..0.5004 ranks perfectly (AUC 1) but spreads by 5e-4; seed 1 stays as it was
    seed0 = sel & (preds["seed"] == 0)
    preds.loc[seed0, "p"] = 0.4995 + (preds.loc[seed0, "p"] - 0.5) * 0.002
    per_seed = compute_metrics(preds, p_threshold=0.5, n_boot=20)
    d0 = next(r for r in per_seed if r["experiment"] == "d" and r["n_train_target"] == 100 and r["seed"] == 0)
    assert d0["flat"] is True and d0["p_std"] == pytest.approx(0.002 * np.std([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]), rel=1e-6)
    assert d0["auc"] == 1.0  # the ranking survives; that is why the flag is needed
    b0 = next(r for r in per_seed if r["experiment"] == "b" and r["n_train_target"] == 100 and r["seed"] == 0)
    assert b0["flat"] is False and b0["p_std"] > 0.2
    agg = aggregate(per_seed)
    t2 = table2(agg, {"Q1": 100})
    assert t2.set_index("experiment")["n_flat"].to_dict() == {"0": 0, "a": 0, "b": 0, "c": 0, "d": 1}
    f = findings(t2, label_budget(agg)).iloc[0]
    assert (f["d_flat_seeds"], f["d_seeds"]) == (1, 2)
    md = _report_at_n100(preds, tmp_path)
    assert "Flat models (P barely varies): Q1 (d) 1 of 2 seeds." in md
    lb = pd.read_csv(tmp_path / "figures" / "label_budget.csv").set_index(["experiment", "n_train_target"])
    assert lb.loc[("d", 100), "n_flat"] == 1 and lb["n_flat"].sum() == 1
    lines = study._findings_lines(tmp_path / "metrics.json")
    assert lines[1].endswith("(1 of 2 (d) seeds flat: P barely varies)")
    assert lines[2:4] == ["claims, per question:",
                          "  (a) loses >= 0.02 of TPR or precision against (0): Q1 (1 of 1)"]
    assert lines[-1].endswith("(flat (d) seeds in Q1: that (d) stayed on the loss plateau or died)")
    # the sweep as a table: seed 1 reversed at 50 (AUC 0 and 1), both perfect at 100
    lb_md = (tmp_path / "label_budget.md").read_text().splitlines()
    assert lb_md[0] == "| Question | Exp. | N = 50 | N = 100 | reaches (0) at |"
    assert lb_md[2] == "| Q1 | (b) | 0.500 ± 0.707 | 1.000 ± 0.000 | 100 |"
    assert lb_md[4] == "| Q1 | (d) | 0.500 ± 0.707 | 1.000 ± 0.000 (1 flat) | 100 |"
    assert "Levels: Q1 (0) 1.000, (a) 1.000. Reaches:" in lb_md[-1]
    assert budget_markdown(label_budget(agg[agg["experiment"].isin(["0", "a"])])) == ""


def test_dead_models_are_counted_apart_from_flat_ones(tmp_path):
    """A dead model (no feature channel fires: the card's active_feature_channels = 0) is flat
    and named dead; a run's predictions without that column (older runs) count none dead."""
    preds = _synthetic_predictions()
    preds["active_feature_channels"] = 90.0
    d100 = (preds["experiment"] == "d") & (preds["n_train_target"] == 100)
    preds.loc[d100 & (preds["seed"] == 0), "p"] = 0.4987  # one P for every galaxy
    preds.loc[d100 & (preds["seed"] == 0), "active_feature_channels"] = 0.0
    seed1 = d100 & (preds["seed"] == 1)  # flat but alive: P spread by 5e-4, channels firing
    preds.loc[seed1, "p"] = 0.4995 + (preds.loc[seed1, "p"] - 0.5) * 0.002
    preds.loc[seed1, "active_feature_channels"] = 12.0
    per_seed = compute_metrics(preds, p_threshold=0.5, n_boot=20)
    by = {(r["experiment"], r["n_train_target"], r["seed"]): r for r in per_seed}
    assert by[("d", 100, 0)]["dead"] is True and by[("d", 100, 0)]["auc"] == 0.5
    assert by[("d", 100, 1)]["dead"] is False and by[("d", 100, 1)]["flat"] is True
    assert by[("d", 100, 1)]["active_feature_channels"] == 12
    assert by[("b", 100, 0)]["dead"] is False and by[("b", 100, 0)]["active_feature_channels"] == 90
    t2 = table2(aggregate(per_seed), {"Q1": 100}).set_index("experiment")
    assert (t2.loc["d", "n_flat"], t2.loc["d", "n_dead"]) == (2, 1)
    assert t2["n_dead"].sum() == 1
    md = _report_at_n100(preds, tmp_path)
    assert "Flat models (P barely varies): Q1 (d) 2 of 2 seeds (1 dead)." in md
    assert "active_feature_channels = 0" in md
    f = findings(table2(aggregate(per_seed), {"Q1": 100})).iloc[0]
    assert (f["d_flat_seeds"], f["d_dead_seeds"], f["d_seeds"]) == (2, 1, 2)
    lines = study._findings_lines(tmp_path / "metrics.json")
    assert lines[1].endswith("(2 of 2 (d) seeds flat: P barely varies; 1 dead)")
    old = compute_metrics(_synthetic_predictions(), p_threshold=0.5, n_boot=20)
    assert all(r["dead"] is False and r["active_feature_channels"] is None for r in old)
    assert aggregate(old)["n_dead"].sum() == 0


def test_report_files_from_synthetic_predictions(tmp_path):
    preds = _synthetic_predictions()
    preds.to_parquet(tmp_path / "predictions.parquet", index=False)
    cfg = tiny_config()
    cfg["target"]["n_train"] = {"Q1": 100, "Q2": 100, "Q3": 100}
    written = write_report(tmp_path, cfg=cfg)
    md = (tmp_path / "table2.md").read_text()
    assert md.count("| Q1 |") == 5 + 5  # Table 2 rows and the truth table rows
    roc = pd.read_csv(tmp_path / "figures" / "roc.csv")
    # the (0) curve of 8 distinct scores: 9 points from (0,0) to (1,1)
    r0 = roc[roc["experiment"] == "0"]
    assert len(r0) == 9 and r0["tpr"].iloc[4] == 1.0 and r0["fpr"].iloc[4] == 0.0
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["n_train_to_reach_level_0"]["by_task"]["Q1"]["d"] == 100
    assert [r["question"] for r in doc["findings"]] == ["Q1"]
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # roc and label budget (no Stores given)
    assert 'src="figures' not in html
    assert (tmp_path / "figures" / "label_budget.csv").exists()
    assert "figures/roc.png" in written
    assert "Training precision" not in md  # no model cards: nothing said


def test_table2_says_which_precision_the_models_trained_in(tmp_path):
    """A preset's "auto" precision is bf16 on one CPU and float32 on another, so the table says
    what the run's cards record: the precision every model actually trained in."""
    preds = _synthetic_predictions()
    preds.to_parquet(tmp_path / "predictions.parquet", index=False)
    for name, precision in (("Q1/source", "bf16-mixed"), ("Q1/b_n100_s0", "bf16-mixed"),
                            ("Q1/d_n100_s0", "32-true")):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "card.json").write_text(json.dumps({"recipe": {"precision": precision}}))
    cfg = tiny_config()
    cfg["target"]["n_train"] = {"Q1": 100, "Q2": 100, "Q3": 100}
    write_report(tmp_path, cfg=cfg)
    said = " Training precision: float32 (1 model), bf16-mixed (2 models)."
    assert said in (tmp_path / "table2.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert said.strip() in html and "<th>precision</th>" in html


@pytest.mark.slow
def test_end_to_end_study_with_the_real_engine(tmp_path):
    """Few galaxies, one epoch, one seed: every file, Table 2's shape, metrics from predictions."""
    src, tgt = make_pair(tmp_path / "data", n=360)
    cfg = tiny_config()
    cfg["study"]["seeds"] = [0]
    cfg["sweep"] = {"n_train": [], "seeds": []}  # the sweep is tested with a fake engine
    out = tmp_path / "run"
    res = study.run_study(out=out, source=src, target=tgt, config=cfg, progress=False)
    for name in ("config.toml", "splits.parquet", "predictions.parquet", "metrics.json", "table2.md",
                 "table2.csv", "table2.tex", "report.html", "figures/roc.png", "figures/roc.csv",
                 "figures/label_budget.png", "figures/label_budget.csv", "figures/examples.png",
                 "figures/examples.csv", "figures/false_positives_q3.csv", "label_budget.md"):
        assert (out / name).exists(), name
    for task in ("Q1", "Q2", "Q3"):
        card = json.loads((out / "models" / task / "source" / "card.json").read_text())
        assert card["task"] == task and card["survey"] == "sdss"
        n = cfg["target"]["n_train"][task]
        card = json.loads((out / "models" / task / f"c_n{n}_s0" / "card.json").read_text())
        assert card["survey"] == "des" and card["study"]["trainable"] == "head"
        assert card["n_train"] == n
    t2 = pd.read_csv(out / "table2.csv", dtype={"experiment": str})
    # the pair shares ids, so (0t) runs: the SDSS model on the SDSS images of the DES test galaxies
    assert list(t2["question"]) == ["Q1"] * 6 + ["Q2"] * 6 + ["Q3"] * 6
    assert list(t2["experiment"]) == ["0", "0t", "a", "b", "c", "d"] * 3
    assert list(t2[t2["experiment"] == "b"]["n_train"]) == [40, 30, 20]
    # every number of metrics.json is recomputed exactly from predictions.parquet
    preds = pd.read_parquet(out / "predictions.parquet")
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["per_seed"]) == len(res.experiments)
    for row in doc["per_seed"]:
        g = preds[(preds["task"] == row["task"]) & (preds["experiment"] == row["experiment"])
                  & (preds["n_train_target"] == row["n_train_target"]) & (preds["seed"] == row["seed"])]
        ref = metrics.evaluate_predictions(g["label"].to_numpy(), g["p"].to_numpy(), p_threshold=0.5,
                                           n_boot=cfg["study"]["n_boot"], seed=0)
        for k in ("tpr", "precision", "accuracy", "auc", "auc_lo", "auc_hi", "tp", "fp", "tn", "fn"):
            want = ref[k]
            assert (row[k] is None and not np.isfinite(want)) or row[k] == want, (row["task"], k)
        assert row["n_test"] == len(g) and row["n_pos"] == int(g["label"].sum())
        # metrics at the model's own validation threshold (from its card, carried in predictions)
        thr = g["p_threshold_val"].iloc[0]
        if np.isfinite(thr):
            bv = metrics.binary_metrics(g["label"].to_numpy(), g["p"].to_numpy(), p_threshold=thr)
            assert row["val_threshold"]["tpr"] == bv["tpr"] and row["val_threshold"]["p_threshold"] == thr
    assert np.isfinite(preds["p_threshold_val"]).any()
    # each model's count of firing feature channels (its card's), and the dead flag from it
    for task in ("Q1", "Q2", "Q3"):
        n = cfg["target"]["n_train"][task]
        card = json.loads((out / "models" / task / f"d_n{n}_s0" / "card.json").read_text())
        assert 0 <= card["active_feature_channels"] <= 128
        sel = (preds["task"] == task) & (preds["experiment"] == "d")
        assert (preds.loc[sel, "active_feature_channels"] == card["active_feature_channels"]).all()
    for row in doc["per_seed"]:
        assert row["dead"] == (row["active_feature_channels"] == 0)
    # (0) and (a) share the source model's threshold
    q1 = preds[preds["task"] == "Q1"]
    assert q1[q1["experiment"] == "0"]["p_threshold_val"].iloc[0] == q1[q1["experiment"] == "a"]["p_threshold_val"].iloc[0]
    # (0t): the same galaxies and labels as (a), through the source survey and the same model
    for task in ("Q1", "Q2", "Q3"):
        pt = preds[preds["task"] == task]
        p0t, pa = (pt[pt["experiment"] == e].set_index("id") for e in ("0t", "a"))
        assert set(p0t.index) == set(pa.index) and len(p0t) == len(pa) > 0
        assert (p0t.loc[pa.index, "label"] == pa["label"]).all()
        assert set(p0t["survey"]) == {"sdss"} and set(pa["survey"]) == {"des"}
        assert p0t["p_threshold_val"].iloc[0] == pa["p_threshold_val"].iloc[0]
        assert not np.allclose(p0t.loc[pa.index, "p"], pa["p"])  # other images, other P
    f1 = next(r for r in doc["findings"] if r["question"] == "Q1")
    auc = {e: t2[(t2["question"] == "Q1") & (t2["experiment"] == e)]["auc"].iloc[0] for e in ("0t", "a", "b")}
    assert f1["auc_a_minus_0t"] == pytest.approx(auc["a"] - auc["0t"])
    assert f1["auc_b_minus_0t"] == pytest.approx(auc["b"] - auc["0t"])
    # Table 2 of a single seed is the per-seed row itself
    q1b = t2[(t2["question"] == "Q1") & (t2["experiment"] == "b")].iloc[0]
    ps = next(r for r in doc["per_seed"] if r["task"] == "Q1" and r["experiment"] == "b" and r["n_train_target"] == 40)
    assert q1b["auc"] == ps["auc"]
    # no test galaxy was ever trained on: the (d) model's training ids vs its test ids
    ids_d = set(pd.read_csv(out / "models" / "Q1" / "d_n40_s0" / "training_ids.csv", dtype={"id": str})["id"])
    ids_test = set(preds[(preds["task"] == "Q1") & (preds["experiment"] == "d")]["id"])
    assert ids_d and not ids_d & ids_test
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "[study]" in html
    # resume: a second call trains nothing
    res2 = study.run_study(out=out, source=src, target=tgt, config=cfg, progress=False, report=False)
    assert res2.trained == 0 and res2.skipped == 3 + len(res.experiments)

    # `morphtransfer report RUN`: the report written again from predictions.parquet alone, the
    # same numbers, the run's notes kept, nothing trained
    from typer.testing import CliRunner

    from morphtransfer import cli

    before = {n: (out / n).read_text() for n in ("table2.csv", "table2.md", "metrics.json")}
    models_before = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*") if p.is_file()}
    for n in ("table2.csv", "table2.md", "metrics.json", "report.html", "figures/roc.png",
              "figures/examples.png"):
        (out / n).unlink()
    run = CliRunner().invoke(cli.app, ["report", str(out)])
    assert run.exit_code == 0, run.output
    for n, text in before.items():
        assert (out / n).read_text() == text, n
    assert (out / "report.html").exists() and (out / "figures" / "examples.png").exists()
    assert "claims, per question:" in run.output and "| Q3 | (d) |" in run.output
    assert models_before == {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*")
                             if p.is_file()}
    assert json.loads(before["metrics.json"])["notes"] == json.loads((out / "metrics.json").read_text())["notes"]
    # the Stores moved away: the numbers are the same, the image figures are left out, with a note
    import shutil

    shutil.move(str(src), str(tmp_path / "moved"))
    (out / "figures" / "examples.png").unlink()
    run = CliRunner().invoke(cli.app, ["report", str(out)])
    assert run.exit_code == 0, run.output
    assert (out / "table2.csv").read_text() == before["table2.csv"]
    assert not (out / "figures" / "examples.png").exists()
    assert "could not be opened" in " ".join(run.output.split())


def test_report_command_names_what_is_missing(tmp_path, monkeypatch, capsys):
    import sys

    from morphtransfer import cli

    for args, expect in (([str(tmp_path / "nothing")], "is not a study run folder"),):
        monkeypatch.setattr(sys, "argv", ["morphtransfer", "report", *args])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2
        assert expect in " ".join(capsys.readouterr().out.split())
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.toml").write_text("[study]\n")
    monkeypatch.setattr(sys, "argv", ["morphtransfer", "report", str(tmp_path / "half")])
    with pytest.raises(SystemExit):
        cli.main()
    out = " ".join(capsys.readouterr().out.split())
    assert "no predictions.parquet yet" in out and "resumes it" in out
