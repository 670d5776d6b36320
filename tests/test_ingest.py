"""Ingest real cutouts + catalogues into a Store; bad galaxies go to rejects; resume."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from morphtransfer.data.ingest import ingest, parse_bands
from morphtransfer.data.preprocess import preprocess_cutout
from morphtransfer.data.readers import read_composite
from morphtransfer.data.store import Store
from morphtransfer.errors import InputError
from morphtransfer.tasks import robust_labels


def _gz1_subset(shared_data, tmp_path, n):
    labels = pd.read_csv(shared_data / "sdss_gz1" / "labels.csv").iloc[:n]
    p = tmp_path / "labels.csv"
    labels.to_csv(p, index=False)
    return labels, p


def test_gz1_ingest_pool_labels_and_pixels(shared_data, tmp_path):
    labels, cat = _gz1_subset(shared_data, tmp_path, 300)
    out = tmp_path / "store"
    res = ingest(shared_data / "sdss_gz1", cat, "gz1", out, survey="sdss", workers=2,
                 batch_size=64, progress=False).ingest_report
    kept = labels[~labels.gz1_class.isin([4, 5])]
    assert res.n_ingested == len(kept) and res.n_rejected == 0
    assert res.n_dropped_by_catalog == int(labels.gz1_class.isin([4, 5]).sum())
    s = Store(out)
    assert s.bands == ["g", "r", "i"] and s.survey == "sdss" and len(s) == len(kept)
    # rows follow the catalogue order; labels follow the GZ1 classes
    assert s.catalog["id"].tolist() == kept["objid"].astype(str).tolist()
    q1 = robust_labels(s.catalog, "Q1").to_numpy()
    np.testing.assert_array_equal(q1, np.where(kept.gz1_class.to_numpy() == 0, 0, 1))
    # the stored image is exactly the preprocessing of the JPEG decoded at 1/2 DCT scale
    row = s.catalog.iloc[5]
    cut = read_composite(shared_data / "sdss_gz1" / row["file"], ("i", "r", "g"), min_size=138)
    np.testing.assert_allclose(s.read_images([row["image_index"]])[0],
                               preprocess_cutout(cut.data), atol=1e-6)
    imgs = s.read_images(np.arange(len(s)))
    np.testing.assert_allclose(imgs.reshape(len(s), 3, -1).max(axis=2), 1.0)
    assert (s.catalog["crop_rule"] == "whole_image").all()
    assert s.meta["ingest"]["channel_bands"] == ["i", "r", "g"]


def _bad_folder(shared_data, tmp_path):
    src = sorted((shared_data / "sdss_gz1" / "images").glob("*.jpeg"))[:3]
    d = tmp_path / "imgs"
    d.mkdir()
    for p in src:
        shutil.copy(p, d / p.name)
    raw = src[0].read_bytes()
    (d / "trunc.jpeg").write_bytes(raw[: len(raw) // 4])
    (d / "html.jpeg").write_bytes(b"<html><body>Error 500</body></html>")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + 50).save(d / "tiny.png")
    rgb = np.asarray(Image.open(src[1]).convert("RGB")).copy()
    rgb[:, :, 2] = 0  # blue = g band empty
    Image.fromarray(rgb).save(d / "nog.png")
    cube = np.ones((3, 64, 64), np.float32)
    cube[1, 5, 5] = np.nan
    hdr = fits.Header()
    for i, b in enumerate("gri"):
        hdr[f"BAND{i}"] = b
    fits.PrimaryHDU(cube, header=hdr).writeto(d / "nan.fits")
    good_cube = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32) + 0.1
    fits.PrimaryHDU(good_cube, header=hdr).writeto(d / "good.fits")
    ids = [p.stem for p in src]
    rows = [
        (ids[0], src[0].name), (ids[1], src[1].name), (ids[2], src[2].name),
        ("dup", src[0].name), ("dup", src[1].name),
        ("trunc", "trunc.jpeg"), ("html", "html.jpeg"), ("tiny", "tiny.png"),
        ("nog", "nog.png"), ("nan", "nan.fits"), ("missing", "missing.jpeg"), ("nofile", ""),
        ("cube", "good.fits"),
    ]
    cat = pd.DataFrame(rows, columns=["id", "file"])
    cat["smooth_or_featured_smooth_count"] = 9
    cat["smooth_or_featured_featured_or_disk_count"] = 1
    p = tmp_path / "cat.csv"
    cat.to_csv(p, index=False)
    return d, p


def test_bad_galaxies_go_to_rejects_and_the_rest_goes_on(shared_data, tmp_path):
    d, cat = _bad_folder(shared_data, tmp_path)
    out = tmp_path / "store"
    res = ingest(d, cat, "tidy", out, survey="sdss", workers=1, progress=False)
    res = res.ingest_report
    s = Store(out)
    assert sorted(s.catalog["id"]) == sorted(
        [p.stem for p in sorted(d.glob("58*.jpeg"))] + ["dup", "cube"])
    rej = s.rejects().set_index("id")["reason"]
    assert set(rej.index) == {"dup", "trunc", "html", "tiny", "nog", "nan", "missing", "nofile"}
    assert "duplicate id" in rej["dup"]
    assert "cannot decode" in rej["trunc"] and "cannot decode" in rej["html"]
    assert "only 8 x 8" in rej["tiny"]
    assert "band(s) [0]" in rej["nog"]  # g (blue) is band 0 of g,r,i
    assert "NaN/inf" in rej["nan"]
    assert "not found" in rej["missing"] and "no image file" in rej["nofile"]
    assert res.n_ingested == 5 and res.n_rejected == 8
    # resume: nothing redone, no rejects written twice
    res2 = ingest(d, cat, "tidy", out, survey="sdss", workers=1, progress=False)
    res2 = res2.ingest_report
    assert res2.n_ingested == 0 and res2.n_rejected == 0 and res2.n_skipped == 12
    assert len(Store(out).rejects()) == 8 and len(Store(out)) == 5


def test_interrupted_ingest_resumes_without_loss(shared_data, tmp_path, monkeypatch):
    from morphtransfer.data.store import StoreWriter

    labels, cat = _gz1_subset(shared_data, tmp_path, 40)
    out = tmp_path / "store"
    real_append = StoreWriter.append
    calls = {"n": 0}

    def crash_on_second(self, rows, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C between two committed batches
        return real_append(self, rows, images)

    monkeypatch.setattr(StoreWriter, "append", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ingest(shared_data / "sdss_gz1", cat, "gz1", out, batch_size=16, workers=1,
               progress=False)
    monkeypatch.setattr(StoreWriter, "append", real_append)
    part = Store(out).catalog["id"].tolist()
    assert len(part) == 16  # the first batch was committed and survives
    rest = ingest(shared_data / "sdss_gz1", cat, "gz1", out, batch_size=32, workers=1,
                  progress=False).ingest_report
    s = Store(out)
    kept = labels[~labels.gz1_class.isin([4, 5])]
    assert s.catalog["id"].tolist() == kept["objid"].astype(str).tolist()
    assert rest.n_skipped == 16 and rest.n_ingested == len(kept) - 16
    assert s.catalog["image_index"].tolist() == list(range(len(s)))
    np.testing.assert_allclose(s.read_images(np.arange(len(s))).max(axis=(2, 3)), 1.0)


def test_fits_ingest_crops_ten_r90(tmp_path):
    # a Legacy-Survey-like cube with a WCS at 0.262"/px and R90 = 5.24" -> 200 px crop of 400 px
    n = 400
    yy, xx = np.indices((n, n)) - n / 2 + 0.5
    gal = np.exp(-np.hypot(yy, xx) / 20.0).astype(np.float32)
    hdr = fits.Header()
    for i, b in enumerate("grz"):
        hdr[f"BAND{i}"] = b
    hdr.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0, CRVAL2=0.0, CRPIX1=200,
               CRPIX2=200, CD1_1=-0.262 / 3600, CD1_2=0.0, CD2_1=0.0, CD2_2=0.262 / 3600)
    d = tmp_path / "fits"
    d.mkdir()
    fits.PrimaryHDU(np.stack([gal, 2 * gal, 3 * gal]), header=hdr).writeto(d / "g1.fits")
    cat = tmp_path / "c.csv"
    pd.DataFrame({"id": ["g1"], "file": ["g1.fits"], "r90_arcsec": [5.24]}).to_csv(cat, index=False)
    s = ingest(d, cat, "tidy", tmp_path / "s", survey="decals", workers=1, progress=False)
    assert isinstance(s, Store) and s.ingest_report.n_ingested == 1
    assert s.catalog.loc[0, "crop_rule"] == "10xR90" and s.bands == ["g", "r", "z"]
    img = s.read_images([0])[0]
    expect = preprocess_cutout(np.stack([gal] * 3), 0.262, 5.24)
    np.testing.assert_allclose(img, expect, atol=1e-6)
    # the crop spans 200 of 400 px: the output's edge pixel averages r = 97..100 px, so about
    # exp(-98.5/20) of the peak pixel (itself ~0.96 of the true peak); the whole image would give
    # exp(-197/20) ~ 5e-5 there
    assert 0.0067 < img[0, 34, 0] < 0.0085


def test_bad_arguments_are_input_errors(shared_data, tmp_path):
    _, cat = _gz1_subset(shared_data, tmp_path, 5)
    with pytest.raises(InputError, match="does not exist"):
        ingest(tmp_path / "none", cat, "gz1", tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="unknown catalogue format"):
        ingest(shared_data / "sdss_gz1", cat, "gz3", tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="unknown survey"):
        ingest(shared_data / "sdss_gz1", cat, "gz1", tmp_path / "s", survey="hst", progress=False)
    assert parse_bands("g,r,i") == ("g", "r", "i") and parse_bands("grz") == ("g", "r", "z")
    assert parse_bands(None) is None


@pytest.mark.parametrize(
    "fmt,catalog,images,survey,n",
    [
        ("gz2", "galaxy_zoo_2/gz2_hart16.csv", "galaxy_zoo_2/images", "sdss", 3),
        ("kaggle", "galaxy_zoo_challenge/training_solutions_rev1.csv",
         "galaxy_zoo_challenge/images_training_rev1", "sdss", 3),
        ("gzdecals", "galaxy_zoo_decals/gz_decals_volunteers_5.csv", "galaxy_zoo_decals",
         "decals", 6),
        ("gzdecals", "galaxy_zoo_decals/gz_decals_volunteers_1_and_2.csv", "galaxy_zoo_decals",
         "decals", 6),
    ],
)
def test_every_real_fixture_format_ingests(shared_data, tmp_path, fmt, catalog, images, survey, n):
    fx = shared_data / "fixtures"
    res = ingest(fx / images, fx / catalog, fmt, tmp_path / "s", survey=survey, workers=1,
                 progress=False).ingest_report
    assert res.n_ingested == n and res.n_rejected == 0
    s = Store(tmp_path / "s")
    assert s.bands == (["g", "r", "z"] if survey == "decals" else ["g", "r", "i"])
    # GZ DECaLS has petro_th90 but its PNGs carry no pixel scale: the whole image is used
    assert set(s.catalog["crop_rule"]) == {"whole_image"}
    np.testing.assert_allclose(s.read_images(np.arange(n)).max(axis=(2, 3)), 1.0)


def test_cli_ingest_and_bad_format(shared_data, tmp_path):
    import subprocess
    import sys

    fx = shared_data / "fixtures" / "galaxy_zoo_2"
    base = [sys.executable, "-m", "morphtransfer.cli", "ingest", "--images", str(fx / "images"),
            "--catalog", str(fx / "gz2_hart16.csv"), "--out", str(tmp_path / "s")]
    ok = subprocess.run(base + ["--format", "gz2", "--workers", "1"], capture_output=True,
                        text=True, env={"COLUMNS": "200", "PATH": ""})
    assert ok.returncode == 0, ok.stderr
    assert "3 galaxies ingested" in ok.stdout and len(Store(tmp_path / "s")) == 3
    bad = subprocess.run(base + ["--format", "gz9"], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": ""})
    assert bad.returncode == 2 and "unknown catalogue format 'gz9'" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
