"""Training engine: a tiny synthetic Store of round vs elongated blobs, 1-2 epochs, batch 30."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from morphtransfer.data.store import Store, StoreWriter
from morphtransfer.errors import InputError
from morphtransfer.models import DS18, load_model, save_model
from morphtransfer.tasks import add_fractions
from morphtransfer.train import (
    BatchAugment,
    Recipe,
    chance_val_loss,
    class_weights,
    evaluate,
    evaluate_model,
    predict_store,
    split_validation,
    subset_hash_arrays,
    train_model,
)

FAST = dict(max_epochs=2, early_stopping_patience=None)


def blob_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Half round Gaussian blobs (label 0, 'smooth'), half thin elongated ones (label 1, 'disk').

    Random orientation, centre jitter and noise; each band divided by its maximum like the Store.
    The classes differ strongly (axis ratio 1 vs 0.2), so a network learns them in 1-2 epochs.
    """
    yy, xx = np.mgrid[0:69, 0:69].astype("float32") - 34.0
    y = np.arange(n) % 2
    imgs = np.empty((n, 3, 69, 69), dtype="float32")
    for i in range(n):
        phi = rng.uniform(0, np.pi)
        dx, dy = rng.normal(0, 1.5, 2)
        u = (xx - dx) * np.cos(phi) + (yy - dy) * np.sin(phi)
        v = -(xx - dx) * np.sin(phi) + (yy - dy) * np.cos(phi)
        a = rng.uniform(6, 9)
        q = 1.0 if y[i] == 0 else 0.2
        g = np.exp(-0.5 * ((u / a) ** 2 + (v / (a * q)) ** 2))
        for b in range(3):
            im = g * rng.uniform(0.7, 1.0) + rng.normal(0, 0.03, g.shape)
            imgs[i, b] = im / im.max()
    return imgs, y


def _votes(y: np.ndarray) -> pd.DataFrame:
    # 20 volunteers, 90% agreeing with the truth: robust labels equal y
    c = pd.DataFrame(
        {
            "smooth_or_featured_smooth_count": np.where(y == 0, 18, 2),
            "smooth_or_featured_featured_or_disk_count": np.where(y == 1, 18, 2),
            "smooth_or_featured_artifact_count": 0,
            "disk_edge_on_yes_count": np.where(y == 1, 18, 2),
            "disk_edge_on_no_count": np.where(y == 0, 18, 2),
        }
    )
    return add_fractions(c)


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory) -> Store:
    path = tmp_path_factory.mktemp("stores") / "blobs"
    rng = np.random.default_rng(42)
    imgs, y = blob_images(200, rng)
    rows = pd.concat([pd.DataFrame({"id": [f"g{i:04d}" for i in range(200)], "true_disk": y}),
                      _votes(y)], axis=1)
    rows["split"] = np.where(np.arange(200) < 120, "train", "test")
    StoreWriter(path, survey="sdss", bands=["g", "r", "i"]).append(rows, imgs)
    return Store(path)


def _train_rows(store):
    cat = store.catalog
    return cat[cat["split"] == "train"].assign(label=lambda d: d["true_disk"])


def _test_rows(store):
    cat = store.catalog
    return cat[cat["split"] == "test"].assign(label=lambda d: d["true_disk"])


@pytest.fixture(scope="module")
def scratch_model(blob_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "scratch"
    train_model(blob_store, "Q1", rows=_train_rows(blob_store), recipe=Recipe(**FAST),
                out=out, progress=False)
    return out


def test_recipe_defaults_are_the_study_and_round_trip():
    r = Recipe()
    assert (r.learning_rate, r.batch_size, r.max_epochs, r.val_fraction) == (1e-3, 30, 50, 0.1)
    assert r.early_stopping_patience == 10 and r.zoom_range == (0.75, 1.3)
    assert (r.rotation_deg, r.shift_fraction, r.flips, r.augment) == (45.0, 0.05, True, True)
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d and Recipe.from_dict(d) == r
    with pytest.raises(InputError, match="unknown recipe keys"):
        Recipe.from_dict({"lr": 0.1})
    with pytest.raises(InputError, match="precision"):
        Recipe(precision="fp8")


def test_scratch_training_learns_blobs_and_writes_card(scratch_model, blob_store):
    card = json.loads((scratch_model / "card.json").read_text())
    assert card["task"] == "Q1" and card["mode"] == "scratch" and card["survey"] == "sdss"
    # 120 train rows: stratified 10% validation = 6 + 6 galaxies
    assert (card["n_train"], card["n_fit"], card["n_val"]) == (120, 108, 12)
    assert card["recipe"]["max_epochs"] == 2 and card["epochs_run"] == 2
    assert card["best_epoch"] in (1, 2)
    # Q1 is not balanced in the study: both classes weigh 1
    assert card["class_weights"] == {"0": 1.0, "1": 1.0}
    rows = _train_rows(blob_store).reset_index(drop=True)
    assert card["training_set_hash"] == blob_store.subset_hash(rows, "label")
    log = pd.read_csv(scratch_model / "log" / "metrics.csv")
    assert {"train_loss", "val_loss"} <= set(log.columns)
    assert log["val_loss"].notna().sum() == 2
    # round vs axis-ratio-0.2 blobs are separable by size of the second moment; 2 epochs of 108
    # galaxies take a random network (AUC 0.5) clearly above chance on the 80 unseen galaxies
    m = evaluate(scratch_model, blob_store, "Q1", rows=_test_rows(blob_store), n_boot=200)
    assert m["n"] == 80 and m["n_pos"] == 40
    assert m["auc"] > 0.8, m
    assert m["auc_lo"] <= m["auc"] <= m["auc_hi"]
    assert not (scratch_model / "checkpoints").exists()
    # a network that learnt keeps feature channels firing on its validation galaxies
    assert 10 <= card["active_feature_channels"] <= 128
    # ... and left the loss plateau: 6 + 6 validation galaxies, unweighted, so a constant P
    # scores ln 2, and the kept epoch is well under it
    assert card["chance_val_loss"] == pytest.approx(np.log(2), abs=1e-12)
    assert card["left_plateau"] is True and card["best_val_loss"] < 0.9 * np.log(2)


def test_chance_val_loss_is_the_entropy_of_the_weighted_positive_share():
    # a quarter positive, unweighted: H(0.25)
    y = np.array([1, 0, 0, 0] * 5)
    assert chance_val_loss(y) == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), abs=1e-12)
    # the study's balanced class weights n / (2 n_c) make the two classes weigh alike: ln 2
    w = np.where(y == 1, 20 / (2 * 5), 20 / (2 * 15))
    assert chance_val_loss(y, w) == pytest.approx(np.log(2), abs=1e-12)
    assert chance_val_loss(np.zeros(4)) == 0.0  # one class: a constant P is perfect


def test_scratch_training_that_learns_nothing_is_warned_about_and_carded(blob_store, tmp_path):
    # labels that do not follow the images, and a step too small to move: the training ends on
    # the loss of a constant P
    rows = _train_rows(blob_store).assign(
        label=np.random.default_rng(3).permutation(np.arange(120) % 2))
    recipe = Recipe(max_epochs=1, early_stopping_patience=None, learning_rate=1e-7, augment=False)
    with pytest.warns(UserWarning, match="has not left the loss plateau"):
        out = train_model(blob_store, "Q1", rows=rows, recipe=recipe, out=tmp_path / "flat",
                          progress=False)
    card = json.loads((out / "card.json").read_text())
    assert card["left_plateau"] is False
    assert card["chance_val_loss"] == pytest.approx(np.log(2), abs=1e-12)
    assert card["best_val_loss"] >= 0.99 * card["chance_val_loss"]
    # a fine-tune starts off the plateau by construction: carded, never warned about
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*loss plateau.*")
        ft = train_model(blob_store, "Q1", rows=rows, recipe=recipe, init=out,
                         out=tmp_path / "ft", progress=False)
    assert "left_plateau" in json.loads((ft / "card.json").read_text())


def test_same_seed_gives_identical_weights_and_resume_returns_finished(blob_store, tmp_path):
    rows = _train_rows(blob_store)
    rec = Recipe(max_epochs=1, early_stopping_patience=None, seed=3)
    a = train_model(blob_store, "Q1", rows=rows, recipe=rec, out=tmp_path / "a", progress=False)
    b = train_model(blob_store, "Q1", rows=rows, recipe=rec, out=tmp_path / "b", progress=False)
    ma, _ = load_model(a)
    mb, _ = load_model(b)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    # same recipe and data: returned as it is, not retrained (the file is untouched)
    mtime = (a / "weights.safetensors").stat().st_mtime_ns
    assert train_model(blob_store, "Q1", rows=rows, recipe=rec, out=a, progress=False) == a
    assert (a / "weights.safetensors").stat().st_mtime_ns == mtime
    # a different recipe into the same folder is refused
    with pytest.raises(InputError, match="trained differently"):
        train_model(blob_store, "Q1", rows=rows, recipe=Recipe(max_epochs=1, seed=4), out=a,
                    progress=False)


def test_head_mode_keeps_conv_weights_bit_identical(scratch_model, blob_store, tmp_path):
    out = train_model(blob_store, "Q1", rows=_train_rows(blob_store), init=scratch_model,
                      trainable="head", recipe=Recipe(max_epochs=1, seed=1), out=tmp_path / "c",
                      n_train=60, progress=False)
    init, _ = load_model(scratch_model)
    tuned, card = load_model(out)
    s0, s1 = init.state_dict(), tuned.state_dict()
    conv_keys = [k for k in s0 if k.startswith("features.")]
    dense_keys = [k for k in s0 if k.startswith("head.")]
    assert len(conv_keys) == 8 and len(dense_keys) == 4
    for k in conv_keys:
        assert torch.equal(s0[k], s1[k]), f"frozen {k} moved"
    assert all(not torch.equal(s0[k], s1[k]) for k in dense_keys)
    assert card["mode"] == "fine-tune head" and card["n_train"] == 60
    assert card["n_trainable_parameters"] == 36_992 * 64 + 64 + 64 + 1
    assert card["init_model_id"] == json.loads((scratch_model / "card.json").read_text())["model_id"]


def test_all_mode_moves_conv_weights(scratch_model, blob_store, tmp_path):
    out = train_model(blob_store, "Q1", rows=_train_rows(blob_store), init=scratch_model,
                      recipe=Recipe(max_epochs=1, val_fraction=0.0), out=tmp_path / "b",
                      n_train=30, progress=False)
    init, _ = load_model(scratch_model)
    tuned, card = load_model(out)
    assert not torch.equal(init.features[1].weight, tuned.features[1].weight)
    assert card["mode"] == "fine-tune all" and card["n_val"] == 0 and card["best_val_loss"] is None


def test_q2_is_class_balanced_and_robust_labels_are_default(blob_store, tmp_path):
    cat = blob_store.catalog
    # 3 positives for 30 negatives: balanced weights n/(2 n_c) on the fit part
    rows = pd.concat([cat[cat.true_disk == 1].head(4), cat[cat.true_disk == 0].head(40)])
    out = train_model(blob_store, "Q2", rows=rows, label_column="true_disk",
                      recipe=Recipe(max_epochs=1), out=tmp_path / "q2", progress=False)
    card = json.loads((out / "card.json").read_text())
    # validation takes round(0.1*4)=0 -> 1 positive and 4 negatives: fit has 3 pos, 36 neg
    assert (card["n_fit"], card["n_val"]) == (39, 5)
    assert card["class_weights"]["1"] == pytest.approx(39 / 6)
    assert card["class_weights"]["0"] == pytest.approx(39 / 72)
    w = class_weights(np.array([1, 0, 0, 0]), True)
    assert w == {0: pytest.approx(4 / 6), 1: 2.0}
    # the validation loss (model selection, early stopping) carries the same class weights: one
    # epoch, so best_val_loss is that epoch's loss of the kept weights on the 5 validation galaxies
    assert card["val_loss"] == "class-weighted mean"
    ids = pd.read_csv(out / "training_ids.csv")
    val = ids[ids["role"] == "val"]
    yv, pv = val["label"].to_numpy(), val["p"].to_numpy().astype("float64")
    bce = -(yv * np.log(pv) + (1 - yv) * np.log1p(-pv))
    wv = np.where(yv == 1, card["class_weights"]["1"], card["class_weights"]["0"])
    assert card["best_val_loss"] == pytest.approx(float((wv * bce).sum() / wv.sum()), rel=1e-4)
    assert card["best_val_loss"] != pytest.approx(float(bce.mean()), rel=1e-2)


def test_split_validation_is_stratified_and_seeded():
    y = np.array([1] * 20 + [0] * 80)
    m = split_validation(y, 0.1, 0)
    assert m.sum() == 10 and y[m].sum() == 2
    assert np.array_equal(m, split_validation(y, 0.1, 0))
    assert not np.array_equal(m, split_validation(y, 0.1, 1))


def test_bad_training_sets_are_clear_errors(blob_store, tmp_path):
    cat = blob_store.catalog
    with pytest.raises(InputError, match="empty"):
        train_model(blob_store, "Q1", rows=cat.head(0).assign(label=[]), out=tmp_path / "x",
                    progress=False)
    with pytest.raises(InputError, match="single class"):
        train_model(blob_store, "Q1", rows=cat.assign(label=1), out=tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="n_train=500"):
        train_model(blob_store, "Q1", n_train=500, out=tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="does not exist"):
        train_model(blob_store, "Q1", init=tmp_path / "nope", out=tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="init="):
        train_model(blob_store, "Q1", trainable="head", out=tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="other than 0/1"):
        train_model(blob_store, "Q1", rows=cat.assign(label=2), out=tmp_path / "x", progress=False)


def test_wrong_task_model_and_wrong_image_shape(scratch_model, blob_store, tmp_path):
    with pytest.raises(InputError, match="task 'Q1', not 'Q2'"):
        train_model(blob_store, "Q2", init=scratch_model, out=tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="task 'Q1', not 'Q2'"):
        evaluate(scratch_model, blob_store, "Q2")
    small = tmp_path / "small"
    StoreWriter(small, survey="des", bands=["g", "r", "i"], image_size=32).append(
        pd.DataFrame({"id": ["a", "b"], "label": [0, 1]}), np.zeros((2, 3, 32, 32), "float32"))
    with pytest.raises(InputError, match=r"shape \(3, 32, 32\)"):
        train_model(small, "Q1", rows=Store(small).catalog, out=tmp_path / "x", progress=False)
    with pytest.raises(InputError, match=r"shape \(3, 32, 32\)"):
        predict_store(scratch_model, small)


def test_predict_store_matches_model_and_order(scratch_model, blob_store):
    model, _ = load_model(scratch_model)
    rows = blob_store.catalog.iloc[[5, 0, 150, 3]]
    p = predict_store(scratch_model, blob_store, rows, batch_size=3, precision="32-true")
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(blob_store.read_images([5, 0, 150, 3])))).numpy()
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-5)
    p16 = predict_store(scratch_model, blob_store, rows, batch_size=3, precision="bf16")
    assert 0 < np.abs(p16 - ref).max() < 0.01  # bfloat16 really used, and close
    assert len(predict_store(model, blob_store)) == 200


def test_evaluate_leaves_out_training_galaxies_and_uses_validation_threshold(
    scratch_model, blob_store
):
    # no rows: robust labels of the whole Store (all 200 robust), minus the 120 used in training
    res = evaluate_model(scratch_model, blob_store, "Q1", n_boot=50)
    assert res["n_excluded_training"] == 120 and len(res["y"]) == 80
    assert [m["threshold_rule"] for m in res["thresholds"]] == ["fixed", "validation (Youden)"]
    card = json.loads((scratch_model / "card.json").read_text())
    assert res["thresholds"][1]["p_threshold"] == card["p_threshold_val"]
    assert res["thresholds"][0]["tp"] + res["thresholds"][0]["fn"] == 40


def test_batch_augment_matrices_follow_the_recipe():
    aug = BatchAugment(45.0, 0.05, (0.75, 1.3), flips=True)
    torch.manual_seed(0)
    m = aug.matrices(4000, 69, 69, "cpu")
    lin = m[:, :, :2]
    det = torch.linalg.det(lin)
    # |det| = 1/(zx zy): zoom factors in [0.75, 1.3] each
    assert det.abs().min() >= 1 / 1.3**2 - 1e-5 and det.abs().max() <= 1 / 0.75**2 + 1e-5
    # one flip (det < 0) about half of the time: P = 1/2 for exactly one of two flips
    assert 0.45 < (det < 0).float().mean() < 0.55
    # the centre moves by the shift only: at most 5% of 69 pixels per axis
    c = torch.tensor([34.0, 34.0, 1.0])
    shift = (m @ c) - c[:2]
    assert shift.abs().max() <= 0.05 * 69 + 1e-4 and shift.abs().max() > 0.04 * 69
    # rotation angle within +-45 deg (up to a flip): from the first column's direction
    ang = torch.rad2deg(torch.atan2(lin[:, 1, 0], lin[:, 0, 0].abs()))
    assert ang.abs().max() <= 45.0 + 1e-3 and ang.abs().max() > 44.0
    # identity parameters leave an image unchanged; the module keeps shape and is batched
    ident = BatchAugment(0.0, 0.0, (1.0, 1.0), flips=False)
    x = torch.rand(5, 3, 69, 69)
    torch.testing.assert_close(ident(x), x, atol=1e-5, rtol=0)
    assert aug(x).shape == x.shape


def test_subset_hash_arrays_equals_store_subset_hash(blob_store):
    rows = blob_store.catalog.iloc[[7, 3, 11]].assign(label=[1, 0, 1])
    imgs = blob_store.read_images(rows["image_index"])
    assert subset_hash_arrays(rows["id"], rows["label"], imgs) == blob_store.subset_hash(rows, "label")


def test_save_untrained_init_then_fine_tune_keeps_card_fields(blob_store, tmp_path):
    torch.manual_seed(0)
    save_model(DS18(), tmp_path / "init", {"task": "Q1", "survey": "sdss"})
    out = train_model(blob_store, "Q1", rows=_train_rows(blob_store), init=tmp_path / "init",
                      recipe=Recipe(max_epochs=1), out=tmp_path / "ft", n_train=40,
                      card_extra={"experiment": "b"}, progress=False)
    card = json.loads((out / "card.json").read_text())
    assert card["experiment"] == "b" and card["init_survey"] == "sdss"
    assert card["n_parameters"] == 2_602_849


def test_interrupted_training_resumes_from_its_last_epoch(blob_store, tmp_path):
    import lightning as L

    class Interrupt(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # epoch 0 finished and was checkpointed
                raise RuntimeError("power cut")

    rec = Recipe(max_epochs=2, early_stopping_patience=None)
    rows = _train_rows(blob_store)
    with pytest.raises(RuntimeError, match="power cut"):
        train_model(blob_store, "Q1", rows=rows, recipe=rec, out=tmp_path / "m", progress=False,
                    callbacks=[Interrupt()])
    assert (tmp_path / "m" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "m" / "card.json").exists()
    starts = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            starts.append(trainer.current_epoch)

    train_model(blob_store, "Q1", rows=rows, recipe=rec, out=tmp_path / "m", progress=False,
                callbacks=[Record()])
    assert starts == [1]  # epoch 0 came from the checkpoint, only epoch 1 ran
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["epochs_run"] == 2 and card["best_epoch"] in (1, 2)


def test_early_stopping_waits_for_min_steps(blob_store, tmp_path):
    import lightning as L

    class StopNow(L.Callback):  # early stopping that fires at the end of every epoch
        def on_validation_end(self, trainer, pl_module):
            trainer.should_stop = True

    rows = _train_rows(blob_store)
    steps = []

    class Steps(L.Callback):
        def on_train_end(self, trainer, pl_module):
            steps.append(int(trainer.global_step))

    def fit(min_steps):
        rec = Recipe(max_epochs=6, early_stopping_patience=None, min_steps=min_steps)
        out = tmp_path / f"m{min_steps}"
        train_model(blob_store, "Q1", rows=rows, recipe=rec, out=out, progress=False,
                    callbacks=[StopNow(), Steps()])
        return json.loads((out / "card.json").read_text())

    card = fit(0)  # the stop ends the first epoch
    n_fit = steps[0]
    assert card["epochs_run"] == 1 and n_fit >= 2
    card = fit(2 * n_fit + 1)  # early stopping waits: into the 3rd epoch, not 1 (nor all 6)
    assert steps[1] == 2 * n_fit + 1 and card["epochs_run"] == 3
    assert card["recipe"]["min_steps"] == 2 * n_fit + 1
    with pytest.raises(InputError, match="min_steps"):
        Recipe(min_steps=-1)


def test_cli_train_and_evaluate(blob_store, tmp_path):
    from typer.testing import CliRunner

    from morphtransfer.cli import app

    runner = CliRunner()
    out = tmp_path / "cli_model"
    r = runner.invoke(app, ["train", "--store", str(blob_store.path), "--task", "Q1", "--split",
                            "train", "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich wraps lines at the terminal width
    assert "scratch Q1 model" in text and "108 training + 12 validation" in text
    assert json.loads((out / "card.json").read_text())["recipe"]["learning_rate"] == 1e-3
    # fine-tuning from it defaults to the presets' fine-tuning learning rate; --lr overrides
    for extra, lr in (([], 1e-4), (["--lr", "3e-4"], 3e-4)):
        ft = tmp_path / f"cli_ft_{lr:g}"
        r = runner.invoke(app, ["train", "--store", str(blob_store.path), "--task", "Q1", "--split", "train",
                                "--epochs", "1", "--init", str(out), "--out", str(ft), *extra])
        assert r.exit_code == 0, r.output
        assert json.loads((ft / "card.json").read_text())["recipe"]["learning_rate"] == lr
    r = runner.invoke(app, ["evaluate", "--model", str(out), "--store", str(blob_store.path),
                            "--task", "Q1", "--n-boot", "50", "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "P_th 0.500" in text and "AUC" in text and "120 galaxies" in text
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["thresholds"][0]["n"] == 80
    r = runner.invoke(app, ["train", "--store", str(blob_store.path), "--task", "Q1", "--split",
                            "nope", "--out", str(tmp_path / "x")])
    assert isinstance(r.exception, InputError) and "split 'nope'" in str(r.exception)


def test_ds18_starts_from_keras_initialisation():
    torch.manual_seed(0)
    m = DS18()
    dense = m.head[1].weight
    # Glorot-uniform limit sqrt(6 / (fan_in + fan_out)) for the 36,992 -> 64 dense layer
    limit = (6 / (36_992 + 64)) ** 0.5
    assert dense.abs().max() <= limit and dense.abs().max() > 0.99 * limit
    biases = [p.detach() for n, p in m.named_parameters() if n.endswith("bias")]
    assert len(biases) == 6 and all(float(b.abs().sum()) == 0 for b in biases)


def test_fast_dropout_keeps_the_right_fraction_and_is_seeded():
    from morphtransfer.models import Dropout

    x = torch.ones(30, 32, 69, 69).contiguous(memory_format=torch.channels_last)
    for p in (0.5, 0.25):
        d = Dropout(p).train()
        torch.manual_seed(0)
        y = d(x)
        kept = (y != 0).float().mean().item()
        # 4.6 million Bernoulli draws: the kept fraction is 1-p to within ~5 standard errors
        assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5 + 1e-4
        assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))  # survivors rescaled
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.manual_seed(0)
        assert torch.equal(d(x), y)  # the torch seed fixes the mask
        assert torch.equal(d.eval()(x), x)
    # the gradient flows only through kept activations, scaled like them
    xg = torch.rand(4, 8, 5, 5, requires_grad=True)
    torch.manual_seed(1)
    out = Dropout(0.5).train()(xg)
    out.sum().backward()
    assert torch.equal(xg.grad, (out != 0).float() * 2.0)


def test_inference_max_pool_equals_torch_max_pool():
    from morphtransfer.models import MaxPool2d

    x = torch.randn(3, 8, 69, 69)
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.bfloat16()):
        with torch.no_grad():
            got = MaxPool2d(2)(t)
        assert got.shape == (3, 8, 34, 34)
        assert torch.equal(got, torch.nn.functional.max_pool2d(t, 2))
    # with gradients the module is torch's own pooling
    xg = x.clone().requires_grad_(True)
    MaxPool2d(2)(xg).sum().backward()
    assert xg.grad.sum().item() == 3 * 8 * 34 * 34


def test_predict_tensor_refuses_wrong_shapes():
    from morphtransfer.train import predict_tensor

    m = DS18()
    with pytest.raises(InputError, match=r"\(2, 3, 64, 64\) do not fit"):
        predict_tensor(m, torch.zeros(2, 3, 64, 64))
    with pytest.raises(InputError, match="do not fit"):
        predict_tensor(m, torch.zeros(3, 69, 69))
    p = predict_tensor(m, torch.zeros(2, 3, 69, 69))
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    assert m.training  # the caller's mode is restored


# ---- inference: one loop (inference.py), precision "auto" --------------------------------------
def _spread_images_and_model(scratch_model, blob_store, n=40):
    model, _ = load_model(scratch_model)
    x = torch.from_numpy(blob_store.read_images(np.arange(n)))
    with torch.no_grad():
        ref = torch.stack([torch.sigmoid(model.eval()(x[i : i + 1]))[0] for i in range(n)]).numpy()
    assert ref.std() > 0.05  # a trained model: probabilities spread, so the checks below bite
    return model, x, ref


def test_predict_tensor_float32_equals_plain_forward_for_any_batch(scratch_model, blob_store):
    from morphtransfer.train import predict_tensor

    model, x, ref = _spread_images_and_model(scratch_model, blob_store)
    for batch in (1, 5, 33, 512):  # on CPU 33 and 512 run micro-batches of 32 and 8
        p = predict_tensor(model, x, batch_size=batch, precision="32-true")
        assert p.dtype == np.float32 and p.shape == (40,)
        assert np.abs(p - ref).max() < 1e-6, batch
    for name in ("bf16-mixed", "bf16-true", "bf16"):
        p = predict_tensor(model, x, precision=name)
        assert 0 < np.abs(p - ref).max() < 0.01, name  # bfloat16 really used, and close


def test_bf16_prediction_leaves_the_callers_model_alone(scratch_model, blob_store):
    from morphtransfer.train import predict_tensor

    model, x, _ = _spread_images_and_model(scratch_model, blob_store, n=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for training in (True, False):
        model.train(training)
        predict_tensor(model, x, precision="bf16-mixed")
        assert model.training is training
        for k, v in model.state_dict().items():
            assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
            assert v.is_contiguous(), k  # not switched to channels_last either
        assert all(m.training is training for m in model.modules())


def test_auto_precision_is_bf16_exactly_where_bf16_is_native(monkeypatch, scratch_model, blob_store):
    from morphtransfer import inference
    from morphtransfer.train import predict_tensor

    native = inference.bf16_supported("cpu")
    assert inference.resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert Recipe().precision == "32-true"  # training is float32 unless asked (README: bf16 check)
    model, x, ref = _spread_images_and_model(scratch_model, blob_store, n=16)
    for flag, want in ((False, "32-true"), (True, "bf16-mixed")):
        monkeypatch.setattr(inference, "bf16_supported", lambda device="cpu", f=flag: f)
        assert inference.resolve_precision("auto", "cpu") == want
        assert Recipe(precision="auto").precision == want
        assert Recipe(precision="32-true").precision == "32-true"  # explicit float32 stays
        assert inference.resolve_precision("32-true", "cpu") == "32-true"
        d = np.abs(predict_tensor(model, x, precision="auto") - ref).max()
        assert (d < 1e-6) if want == "32-true" else (0 < d < 0.01)
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        inference.resolve_precision("fp8")
    with pytest.raises(InputError, match="precision"):
        Recipe(precision="bf16-true")  # training: pure-bf16 weights are not offered


def test_auto_recipe_card_records_the_resolved_precision(scratch_model, blob_store):
    from morphtransfer.inference import resolve_precision

    resolved = resolve_precision("auto")
    card = json.loads((scratch_model / "card.json").read_text())
    assert card["recipe"]["precision"] == "32-true"  # the fixture's Recipe(**FAST): the default
    rows = _train_rows(blob_store)
    mtime = (scratch_model / "weights.safetensors").stat().st_mtime_ns
    # "auto" resolves when the Recipe is made: where bf16 is not native it is the same run as the
    # fixture's float32 one (returned as it is); where it is, a different run (refused below)
    assert Recipe(**FAST, precision="auto").precision == resolved in ("bf16-mixed", "32-true")
    same = train_model(blob_store, "Q1", rows=rows, recipe=Recipe(**FAST, precision="32-true"),
                       out=scratch_model, progress=False)
    assert same == scratch_model
    assert (scratch_model / "weights.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(InputError, match="trained differently"):
        train_model(blob_store, "Q1", rows=rows, recipe=Recipe(**FAST, precision="bf16-mixed"),
                    out=scratch_model, progress=False)


def test_ddp_loaders_shard_training_and_validation_without_overlap():
    from morphtransfer.train import InMemoryImages, _loaders

    def ds(n):
        return InMemoryImages(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2),
                              torch.zeros(n), torch.ones(n))

    fit_ds, val_ds = ds(71), ds(9)
    recipe = Recipe(batch_size=30, seed=3, precision="32-true")
    seen, val_seen = [], []
    for rank in (0, 1):
        fit, val = _loaders(fit_ds, val_ds, recipe, world_size=2, rank=rank)
        fit.sampler.set_epoch(1)  # what Lightning does each epoch
        batches = [b[0][:, 0, 0, 0].long().tolist() for b in fit]
        assert [len(b) for b in batches] == [15, 15, 6]  # 36 each: 71 padded to 72, batch 30 / 2
        seen.append(sum(batches, []))
        val_seen.append(sum((b[0][:, 0, 0, 0].long().tolist() for b in val), []))
    # the ranks cut one seeded permutation: every galaxy once, one repeat to pad 71 to 72
    assert sorted(set(seen[0] + seen[1])) == list(range(71)) and len(seen[0] + seen[1]) == 72
    # validation: every galaxy exactly once over the ranks (no padding repeats)
    assert sorted(val_seen[0] + val_seen[1]) == list(range(9))
    # one process: the whole set in batches of 30, as before
    fit, val = _loaders(fit_ds, val_ds, recipe, world_size=1, rank=0)
    assert [len(b[1]) for b in fit] == [30, 30, 11] and [len(b[1]) for b in val] == [9]


def test_device_layouts_that_cannot_run_the_recipe_are_clear_errors(blob_store, tmp_path):
    rows = _train_rows(blob_store)
    # batch 30 cannot be split over 4 processes: refused before any process starts or file exists
    with pytest.raises(InputError, match="does not divide by 4"):
        train_model(blob_store, "Q1", rows=rows, recipe=Recipe(**FAST), out=tmp_path / "a",
                    progress=False, accelerator="cpu", devices=4, strategy="ddp")
    assert not (tmp_path / "a" / "run.json").exists()
    with pytest.raises(InputError, match="spawn/fork"):
        train_model(blob_store, "Q1", rows=rows, recipe=Recipe(**FAST), out=tmp_path / "b",
                    progress=False, accelerator="cpu", devices=2, strategy="ddp_spawn")
    with pytest.raises(InputError, match="cannot run training on"):
        train_model(blob_store, "Q1", rows=rows, recipe=Recipe(**FAST), out=tmp_path / "c",
                    progress=False, strategy="no-such-strategy")
