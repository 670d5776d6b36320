"""Catalogue inference (issue 6): outputs, provenance, bad input, rejects, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from morphtransfer.data.store import Store, StoreWriter
from morphtransfer.errors import InputError
from morphtransfer.models import DS18, load_model, predict_proba, save_model
from morphtransfer.predict import parts_dir, predict_catalog, read_provenance, rejects_path

N_GALAXIES = 120
FP32 = "32-true"  # tests comparing with predict_proba or the float32 run ask for float32


def _make_store(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = StoreWriter(path, survey="des", bands=["g", "r", "i"])
    # smooth blobs of random size and ellipticity plus noise: inputs that spread the outputs
    yy, xx = np.mgrid[:69, :69] - 34.0
    sig = rng.uniform(2, 12, n)[:, None, None]
    q = rng.uniform(0.2, 1.0, n)[:, None, None]
    blob = np.exp(-0.5 * (xx**2 + (yy / q) ** 2) / sig**2)
    imgs = blob[:, None] + 0.05 * rng.random((n, 3, 69, 69))
    imgs = (imgs / imgs.max(axis=(2, 3), keepdims=True)).astype(np.float32)
    rows = pd.DataFrame(
        {
            "id": [f"DES{i:05d}" for i in range(n)],
            "ra": rng.uniform(0, 360, n),
            "dec": rng.uniform(-60, 0, n),
        }
    )
    w.append(rows, imgs)
    return path


def _make_models(root: Path, tasks=("Q1", "Q2", "Q3")) -> list[Path]:
    out = []
    for i, t in enumerate(tasks):
        torch.manual_seed(100 + i)
        out.append(save_model(DS18(), root / f"ds18_{t}", {"task": t, "survey": "sdss"}))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    store = _make_store(root / "store", N_GALAXIES)
    models = _make_models(root)
    return root, store, models


@pytest.fixture(scope="module")
def parquet_run(setup):
    root, store, models = setup
    # float32 explicitly: the default "auto" is bfloat16 on CPUs with AVX512-BF16
    out = predict_catalog(models, root / "cat.parquet", store=store, shard_size=64, progress=False,
                          precision=FP32)
    return out, pd.read_parquet(out)


def test_parquet_matches_the_models_and_has_provenance(setup, parquet_run):
    root, store, models = setup
    out, cat = parquet_run
    st = Store(store)
    assert list(cat.columns) == ["id", "ra", "dec", "p_Q1", "p_Q2", "p_Q3"]
    assert cat["id"].tolist() == st.catalog["id"].tolist()  # every galaxy once, in Store order
    np.testing.assert_array_equal(cat["ra"].to_numpy(), st.catalog["ra"].to_numpy())
    imgs = torch.from_numpy(st.read_images(st.catalog["image_index"].to_numpy()))
    for path, task in zip(models, ("Q1", "Q2", "Q3")):
        model, _ = load_model(path)
        expected = predict_proba(model, imgs).numpy()
        np.testing.assert_allclose(cat[f"p_{task}"].to_numpy(), expected, atol=2e-6)
    # the probabilities really differ from galaxy to galaxy (the test would catch a constant)
    assert cat["p_Q1"].std() > 1e-4
    prov = read_provenance(out)
    cards = [json.loads((m / "card.json").read_text()) for m in models]
    assert [m["model_id"] for m in prov["models"]] == [c["model_id"] for c in cards]
    assert [m["task"] for m in prov["models"]] == ["Q1", "Q2", "Q3"]
    assert prov["n_galaxies"] == N_GALAXIES and prov["n_rejected"] == 0
    assert prov["input"]["path"] == str(store.resolve()) and len(prov["images_sha256"]) == 64
    assert not parts_dir(out).exists()  # merged and cleaned up
    assert pd.read_csv(rejects_path(out)).empty


def test_fits_has_units_header_provenance_and_same_numbers(setup, parquet_run):
    from astropy.io import fits
    from astropy.table import Table

    root, store, models = setup
    out = predict_catalog(models[:2], root / "cat.fits", store=store, shard_size=48, batch_size=20,
                          progress=False, precision=FP32)
    t = Table.read(out, hdu="CATALOGUE")
    assert str(t["ra"].unit) == "deg" and str(t["dec"].unit) == "deg"
    assert t.colnames == ["id", "ra", "dec", "p_Q1", "p_Q2"]
    _, cat = parquet_run
    np.testing.assert_array_equal(np.asarray(t["p_Q2"]), cat["p_Q2"].to_numpy())
    assert list(t["id"]) == cat["id"].tolist()
    h = fits.getheader(out, "CATALOGUE")
    card = json.loads((models[0] / "card.json").read_text())
    assert h["MODEL1"] == card["model_id"] and h["TASK1"] == "Q1" and h["TASK2"] == "Q2"
    assert h["NGAL"] == N_GALAXIES and h["MTVERS"] == read_provenance(out)["package_version"]
    # same images -> same input hash, whatever the models, shard/batch sizes or output format
    assert h["INHASH"] == read_provenance(parquet_run[0])["images_sha256"]
    assert h["INPATH"] == str(store.resolve())
    assert h["TCOMM4"].startswith("P(Q1: disk/features vs smooth)")
    with fits.open(out) as hdul:  # a valid FITS file (the table is streamed, not astropy-written)
        hdul.verify("exception")
        assert [x.name for x in hdul] == ["PRIMARY", "CATALOGUE", "PROVENANCE"]


def test_rerun_is_a_no_op_and_cli_matches(setup, parquet_run):
    from typer.testing import CliRunner

    from morphtransfer.cli import app

    root, store, models = setup
    out, cat = parquet_run
    mtime = out.stat().st_mtime_ns
    predict_catalog(models, out, store=store, shard_size=64, progress=False, precision=FP32)
    assert out.stat().st_mtime_ns == mtime  # complete and same fingerprint: nothing redone
    res = CliRunner().invoke(
        app,
        ["predict", "--models", str(models[0]), str(models[2]), "--store", str(store),
         "--out", str(root / "cli.parquet"), "--no-progress", "--precision", FP32],
    )
    assert res.exit_code == 0, res.output
    assert f"{N_GALAXIES} galaxies classified" in res.output
    cli = pd.read_parquet(root / "cli.parquet")
    assert list(cli.columns) == ["id", "ra", "dec", "p_Q1", "p_Q3"]
    np.testing.assert_array_equal(cli["p_Q3"].to_numpy(), cat["p_Q3"].to_numpy())


def test_bad_models_and_options_are_refused(setup, tmp_path):
    root, store, models = setup
    with pytest.raises(InputError, match="both for task 'Q1'"):
        predict_catalog([models[0], models[0]], tmp_path / "x.parquet", store=store, progress=False)
    other = tmp_path / "other_q1"
    save_model(DS18(), other, {"task": "Q1", "survey": "des"})
    with pytest.raises(InputError, match="both for task 'Q1'"):
        predict_catalog([models[0], other], tmp_path / "x.parquet", store=store, progress=False)
    resnet = tmp_path / "resnet"
    save_model(DS18(), resnet, {"task": "Q2"})
    card = json.loads((resnet / "card.json").read_text())
    (resnet / "card.json").write_text(json.dumps({**card, "architecture": "resnet18"}))
    with pytest.raises(InputError, match="architecture 'resnet18'"):
        predict_catalog([resnet], tmp_path / "x.parquet", store=store, progress=False)
    five = tmp_path / "five_bands"
    save_model(DS18(in_channels=5), five, {"task": "Q3"})
    with pytest.raises(InputError, match="takes 5 bands but the images have 3"):
        predict_catalog([five], tmp_path / "x.parquet", store=store, progress=False)
    with pytest.raises(InputError, match=r"\.parquet or \.fits"):
        predict_catalog(models, tmp_path / "x.csv", store=store, progress=False)
    with pytest.raises(InputError, match="exactly one input"):
        predict_catalog(models, tmp_path / "x.parquet", progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_catalog_selects_galaxies_and_unknown_ids_go_to_rejects(setup, parquet_run, tmp_path):
    root, store, models = setup
    _, full = parquet_run
    pick = ["DES00110", "DES00003", "NOT_THERE", "DES00003", "DES00077"]
    pd.DataFrame({"id": pick}).to_csv(tmp_path / "sel.csv", index=False)
    out = predict_catalog(
        models[:1], tmp_path / "sel.parquet", store=store, catalog=tmp_path / "sel.csv",
        shard_size=2, progress=False, precision=FP32,
    )
    cat = pd.read_parquet(out)
    assert cat["id"].tolist() == ["DES00003", "DES00077", "DES00110"]  # Store order, once each
    ref = full.set_index("id").loc[cat["id"], "p_Q1"].to_numpy()
    np.testing.assert_array_equal(cat["p_Q1"].to_numpy(), ref)
    rej = pd.read_csv(rejects_path(out))
    assert sorted(rej["id"]) == ["DES00003", "NOT_THERE"]
    reasons = dict(zip(rej["id"], rej["reason"]))
    assert "not in Store" in reasons["NOT_THERE"] and "duplicate" in reasons["DES00003"]
    assert read_provenance(out)["n_rejected"] == 2


def test_mc_dropout_std_is_reproducible_and_p_unchanged(setup, parquet_run, tmp_path):
    root, store, models = setup
    full = parquet_run[1].iloc[:40]
    pd.DataFrame({"id": full["id"]}).to_csv(tmp_path / "first40.csv", index=False)
    kw = dict(store=store, catalog=tmp_path / "first40.csv", shard_size=16, progress=False,
              mc_dropout=3, precision=FP32)
    a = pd.read_parquet(predict_catalog(models[:1], tmp_path / "a.parquet", **kw))
    b = pd.read_parquet(predict_catalog(models[:1], tmp_path / "b.parquet", **kw))
    c = pd.read_parquet(predict_catalog(models[:1], tmp_path / "c.parquet", seed=1, **kw))
    assert list(a.columns) == ["id", "ra", "dec", "p_Q1", "p_Q1_std", "p_Q1_mc_mean"]
    # other micro-batches than the full run: oneDNN may differ in the last float32 bit
    np.testing.assert_allclose(a["p_Q1"].to_numpy(), full["p_Q1"].to_numpy(), atol=1e-6)
    assert (a["p_Q1_std"] > 0).all()  # dropout really on: every galaxy's passes differ
    np.testing.assert_array_equal(a["p_Q1_std"].to_numpy(), b["p_Q1_std"].to_numpy())
    assert not np.array_equal(a["p_Q1_std"].to_numpy(), c["p_Q1_std"].to_numpy())


def test_bf16_close_to_float32(setup, parquet_run, tmp_path):
    root, store, models = setup
    _, full = parquet_run
    out = predict_catalog(models, tmp_path / "bf16.parquet", store=store, precision="bf16",
                          progress=False)
    bf = pd.read_parquet(out)
    for t in ("Q1", "Q2", "Q3"):
        diff = np.abs(bf[f"p_{t}"].to_numpy() - full[f"p_{t}"].to_numpy())
        assert 0 < diff.max() < 0.02  # bf16 really used (not identical), yet close
    assert read_provenance(out)["precision"] == "bf16-true"


def test_default_precision_is_auto_and_the_loop_is_predict_tensors(setup, tmp_path):
    """The catalogue's default precision is bf16 exactly where bfloat16 is native, and its numbers
    are those of train.predict_tensor (one inference loop: inference.run_prepared)."""
    from morphtransfer.predict import bf16_supported, normalise_precision
    from morphtransfer.train import predict_tensor

    root, store, models = setup
    st = Store(store)
    imgs = st.read_images(st.catalog["image_index"].to_numpy())
    model, _ = load_model(models[0])
    want = "bf16-true" if bf16_supported("cpu") else "32-true"
    for prec in ("32-true", None):  # None: the default
        kw = {} if prec is None else {"precision": prec}
        out = predict_catalog(models[:1], tmp_path / f"{prec}.parquet", store=store, shard_size=64,
                              progress=False, device="cpu", **kw)
        if prec is None:
            assert read_provenance(out)["precision"] == want == normalise_precision("auto", "cpu")
        p = pd.read_parquet(out)["p_Q1"].to_numpy()
        # shards of 64 = two micro-batches of 32: the same batches as predict_tensor's
        np.testing.assert_array_equal(p, predict_tensor(model, imgs, precision=prec or "auto"))
    assert normalise_precision("bf16-mixed") == normalise_precision("bf16") == "bf16-true"
    with pytest.raises(InputError, match="predict runs"):
        normalise_precision("16-mixed")
    with pytest.raises(InputError, match="unknown precision"):
        normalise_precision("fp8")


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def test_images_folder_with_unreadable_and_wrong_shape_files(setup, tmp_path):
    from morphtransfer.data.preprocess import preprocess_cutout
    from morphtransfer.data.readers import read_cutout

    root, store, models = setup
    rng = np.random.default_rng(3)
    d = tmp_path / "cutouts"
    d.mkdir()
    good = []
    for i in range(5):
        name = f"gal{i}.png"
        _write_png(d / name, rng.integers(1, 255, (90, 90, 3), dtype=np.uint8))
        good.append(name)
    (d / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _write_png(d / "grey.png", rng.integers(1, 255, (90, 90), dtype=np.uint8))
    out = predict_catalog(models[:1], tmp_path / "img.parquet", images=d, survey="sdss",
                          shard_size=3, batch_size=2, progress=False, precision=FP32)
    cat = pd.read_parquet(out)
    assert cat["id"].tolist() == [f"gal{i}" for i in range(5)]
    rej = pd.read_csv(rejects_path(out))
    assert sorted(rej["id"]) == ["broken", "grey"]
    reasons = dict(zip(rej["id"], rej["reason"]))
    assert "cannot decode" in reasons["broken"] and "single-channel" in reasons["grey"]
    model, _ = load_model(models[0])
    x = np.stack(
        [preprocess_cutout(read_cutout(d / n, bands=("g", "r", "i"), survey="sdss").data) for n in good]
    )
    expected = predict_proba(model, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(cat["p_Q1"].to_numpy(), expected, atol=2e-6)
    with pytest.raises(InputError, match="--survey"):
        predict_catalog(models[:1], tmp_path / "img2.parquet", images=d, progress=False)


def test_killed_run_resumes_to_the_same_catalogue(tmp_path):
    """SIGKILL a CLI run once some shards are committed; the rerun finishes every galaxy once."""
    n, shard = 256, 16
    store = _make_store(tmp_path / "store", n, seed=5)
    models = _make_models(tmp_path, tasks=("Q1",))
    out = tmp_path / "killed.parquet"
    args = [sys.executable, "-m", "morphtransfer.cli", "predict", "--models", str(models[0]),
            "--store", str(store), "--out", str(out), "--shard-size", str(shard),
            "--batch-size", "16", "--mc-dropout", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = parts_dir(out)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(parts.glob("shard-*.parquet"))) >= 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    committed = len(list(parts.glob("shard-*.parquet")))
    assert 2 <= committed < n // shard, "the run was not killed mid-way"
    assert not out.exists()
    resumed = pd.read_parquet(
        predict_catalog(models, out, store=store, shard_size=shard, batch_size=16, mc_dropout=2,
                        progress=False)
    )
    whole = pd.read_parquet(
        predict_catalog(models, tmp_path / "whole.parquet", store=store, shard_size=shard,
                        batch_size=16, mc_dropout=2, progress=False)
    )
    assert resumed["id"].is_unique and len(resumed) == n
    assert sorted(resumed["id"]) == sorted(Store(store).catalog["id"])
    pd.testing.assert_frame_equal(resumed, whole)
    assert not parts.exists()


def test_unfinished_run_with_other_options_is_refused(setup, tmp_path):
    root, store, models = setup
    out = tmp_path / "x.parquet"
    parts_dir(out).mkdir()
    (parts_dir(out) / "plan.json").write_text(json.dumps({"run_id": "0" * 16}))
    with pytest.raises(InputError, match="unfinished run"):
        predict_catalog(models[:1], out, store=store, progress=False)


def test_real_sdss_jpegs_are_classified_from_a_folder(shared_data, tmp_path):
    """The --images path on 24 real SkyServer JPEGs (../shared/data/sdss_gz1), one id absent."""
    labels = pd.read_csv(shared_data / "sdss_gz1" / "labels.csv", nrows=24)
    cat = pd.DataFrame({"id": labels["objid"].astype(str), "file": labels["file"]})
    cat.loc[len(cat)] = {"id": "123", "file": "images/123.jpeg"}
    cat.to_csv(tmp_path / "cat.csv", index=False)
    models = _make_models(tmp_path, tasks=("Q1",))
    out = predict_catalog(models, tmp_path / "sdss.fits", images=shared_data / "sdss_gz1",
                          catalog=tmp_path / "cat.csv", survey="sdss", progress=False)
    from astropy.table import Table

    t = Table.read(out, hdu="CATALOGUE")
    assert list(t["id"]) == labels["objid"].astype(str).tolist()
    p = np.asarray(t["p_Q1"])
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all() and p.std() > 0
    rej = pd.read_csv(rejects_path(out), dtype=str)
    assert rej["id"].tolist() == ["123"] and "file not found" in rej["reason"][0]
