"""Task table and robust labels: hand-made vote rows and the real GZ2 Stripe 82 table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from morphtransfer.errors import InputError
from morphtransfer.tasks import (
    TASKS,
    add_fractions,
    agreement,
    get_task,
    robust_labels,
    robust_summary,
)


def _rows(smooth, featured, artifact=None):
    df = pd.DataFrame({
        "smooth_or_featured_smooth_count": smooth,
        "smooth_or_featured_featured_or_disk_count": featured,
    })
    if artifact is not None:
        df["smooth_or_featured_artifact_count"] = artifact
    return add_fractions(df)


def test_task_table_rows():
    assert list(TASKS) == ["Q1", "Q2", "Q3"]
    q3 = get_task("q3")
    assert q3.question == "bar" and q3.positive == "yes"
    assert q3.prerequisites == (("smooth_or_featured", "featured_or_disk"), ("disk_edge_on", "no"))
    assert get_task("Q1").positive_fraction_column == "smooth_or_featured_featured_or_disk_fraction"
    with pytest.raises(InputError, match="Q4"):
        get_task("Q4")


def test_fraction_rule_hand_rows():
    df = _rows(smooth=[2, 8, 3, 0, 0, 3, 0], featured=[8, 2, 7, 4, 5, 7, 0])
    # 8/10 -> 1; 2/10 -> 0; 7/10 = 0.7 is not > 0.7 -> -1; 4 votes < 5 -> -1; 5/5 -> 1;
    # 7/10 again -1; no votes -> -1
    assert robust_labels(df, "Q1").tolist() == [1, 0, -1, -1, 1, -1, -1]
    assert robust_labels(df, "Q1", p_threshold=0.6).tolist() == [1, 0, 1, -1, 1, 1, -1]
    assert robust_labels(df, "Q1", min_votes=4).tolist()[3] == 1


def test_artifact_votes_dilute_fractions():
    df = _rows(smooth=[1], featured=[7], artifact=[2])  # 7/10 featured, not > 0.7
    assert df["smooth_or_featured_total_votes"].tolist() == [10]
    assert robust_labels(df, "Q1").tolist() == [-1]


def test_agreement_values():
    a = agreement(np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]]))
    h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(a, [1.0, 0.0, 1 - h / np.log(2)])
    assert agreement(np.array([[1 / 3, 1 / 3, 1 / 3]]))[0] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(agreement(np.array([[np.nan, 0.5]]))[0])


def test_agreement_rule_hand_rows():
    # 9/1 (a=0.53), 6/4 (a=0.03), 1/9 (a=0.53), 2/2 too few votes
    df = _rows(smooth=[1, 4, 9, 2], featured=[9, 6, 1, 2], artifact=[0, 0, 0, 0])
    lab = robust_labels(df, "Q1", rule="agreement", min_agreement=0.5)
    assert lab.tolist() == [1, -1, 0, -1]
    assert robust_labels(df, "Q1", rule="agreement", min_agreement=0.01).tolist() == [1, 1, 0, -1]
    with pytest.raises(InputError, match="rule"):
        robust_labels(df, "Q1", rule="majority")


def test_missing_columns_are_an_input_error():
    with pytest.raises(InputError, match="disk_edge_on"):
        robust_labels(_rows([1], [9]), "Q2")


def test_robust_summary_on_real_stripe82(shared_data):
    from morphtransfer.data.catalogs import load_catalog

    path = shared_data / "gz2_stripe82" / "table5.csv.gz"
    cat = load_catalog(path, "gz2")
    raw = pd.read_csv(path)
    # the same rule computed straight from the published columns
    t01 = ["t01_smooth_or_features_a01_smooth_count",
           "t01_smooth_or_features_a02_features_or_disk_count",
           "t01_smooth_or_features_a03_star_or_artifact_count"]
    n = raw[t01].sum(axis=1)
    f_feat = raw[t01[1]] / n.where(n > 0, 1)
    f_smooth = raw[t01[0]] / n.where(n > 0, 1)
    exp_pos = int(((n >= 5) & (f_feat > 0.7)).sum())
    exp_neg = int(((n >= 5) & (f_smooth > 0.7)).sum())
    s = robust_summary(cat).set_index("task")
    assert s.loc["Q1", "n_pos"] == exp_pos == 2267
    assert s.loc["Q1", "n_neg"] == exp_neg == 10485
    assert s.loc["Q2", "n_pos"] == 1289 and s.loc["Q2", "n_neg"] == 6603
    assert s.loc["Q3", "n_pos"] == 861 and s.loc["Q3", "n_neg"] == 4039
    assert s.loc["Q1", "n_total"] == 19761
    assert s.loc["Q1", "frac_pos_of_robust"] == pytest.approx(2267 / (2267 + 10485))
    # the agreement rule keeps a different, checkable number
    lab = robust_labels(cat, "Q1", rule="agreement", min_agreement=0.5)
    assert 0 < (lab >= 0).sum() < len(cat)


def _tree_rows():
    """Four galaxies, 20 volunteers each, whose bar answers are all robust.

    0: an elliptical that 6 of 20 called featured; those 6 all said not edge-on and not barred.
    1: a face-on disk (18 featured, 17 not edge-on), 16 of 17 say barred.
    2: a face-on disk, 15 of 17 say not barred.
    3: an edge-on disk (18 featured, 12 say edge-on); the 6 who said not edge-on: not barred.
    """
    return add_fractions(pd.DataFrame({
        "smooth_or_featured_smooth_count": [14, 2, 2, 2],
        "smooth_or_featured_featured_or_disk_count": [6, 18, 18, 18],
        "disk_edge_on_yes_count": [0, 1, 1, 12],
        "disk_edge_on_no_count": [6, 17, 17, 6],
        "bar_yes_count": [0, 16, 2, 0],
        "bar_no_count": [6, 1, 15, 6],
    }))


def test_prerequisites_keep_the_decision_tree_path():
    df = _tree_rows()
    # without prerequisites the elliptical and the edge-on disk are robust "not barred"
    assert robust_labels(df, "Q3").tolist() == [0, 1, 0, 0]
    # with them only the face-on disks keep a bar label (features 0.3 and not-edge-on 0.33 fail)
    assert robust_labels(df, "Q3", prerequisite_fraction=0.5).tolist() == [-1, 1, 0, -1]
    # Q2 asks of featured galaxies only: the elliptical (0.3 featured) loses its edge-on label
    assert robust_labels(df, "Q2").tolist() == [0, 0, 0, -1]
    assert robust_labels(df, "Q2", prerequisite_fraction=0.5).tolist() == [-1, 0, 0, -1]
    # 0 means off; Q1 has no prerequisites, so the setting does not change it
    assert robust_labels(df, "Q3", prerequisite_fraction=0.0).tolist() == [0, 1, 0, 0]
    assert (robust_labels(df, "Q1", prerequisite_fraction=0.5).tolist()
            == robust_labels(df, "Q1").tolist() == [-1, 1, 1, 1])
    # the disks are 18/20 = 0.9 featured and 17/18 = 0.94 not edge-on: a stricter path keeps
    # them up to 0.9 (exclusive), and nobody from there on
    assert robust_labels(df, "Q3", prerequisite_fraction=0.85).tolist() == [-1, 1, 0, -1]
    assert robust_labels(df, "Q3", prerequisite_fraction=0.9).tolist() == [-1, -1, -1, -1]
    # the agreement rule takes the same path
    assert robust_labels(df, "Q3", rule="agreement", prerequisite_fraction=0.5).tolist()[::3] == [-1, -1]


def test_prerequisite_errors_name_the_fix():
    df = _tree_rows().drop(columns=["disk_edge_on_no_fraction"])
    with pytest.raises(InputError, match=r"disk_edge_on_no_fraction.*prerequisite_fraction = 0"):
        robust_labels(df, "Q3", prerequisite_fraction=0.5)
    assert robust_labels(df, "Q3").tolist() == [0, 1, 0, 0]  # not needed without prerequisites
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        robust_labels(_tree_rows(), "Q3", prerequisite_fraction=1.5)


def test_prerequisites_on_real_stripe82(shared_data):
    from morphtransfer.data.catalogs import load_catalog

    path = shared_data / "gz2_stripe82" / "table5.csv.gz"
    cat = load_catalog(path, "gz2")
    raw = pd.read_csv(path)

    def frac(cols, i):
        n = raw[cols].sum(axis=1)
        return raw[cols[i]] / n.where(n > 0, 1), n

    f_feat, _ = frac(["t01_smooth_or_features_a01_smooth_count",
                      "t01_smooth_or_features_a02_features_or_disk_count",
                      "t01_smooth_or_features_a03_star_or_artifact_count"], 1)
    f_noedge, _ = frac(["t02_edgeon_a04_yes_count", "t02_edgeon_a05_no_count"], 1)
    f_bar, n_bar = frac(["t03_bar_a06_bar_count", "t03_bar_a07_no_bar_count"], 0)
    on_path = (f_feat > 0.5) & (f_noedge > 0.5)
    robust = n_bar >= 5
    lab = robust_labels(cat, "Q3", prerequisite_fraction=0.5)
    assert int((lab == 1).sum()) == int((robust & on_path & (f_bar > 0.7)).sum())
    assert int((lab == 0).sum()) == int((robust & on_path & (1 - f_bar > 0.7)).sum())
    # the path removes more than half of the "not barred" (most of their volunteers never
    # reached the bar question) and a third of the bars: 861 + 4039 -> 585 + 1781
    assert ((lab == 1).sum(), (lab == 0).sum()) == (585, 1781)
    q2 = robust_labels(cat, "Q2", prerequisite_fraction=0.5)
    assert ((q2 == 1).sum(), (q2 == 0).sum()) == (535, 3208)  # from 1289 + 6603
