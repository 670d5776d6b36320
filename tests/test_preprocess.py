"""Preprocessing against hand-computed examples: area averaging, the 10 x R90 crop, per-band max."""

from __future__ import annotations

import numpy as np
import pytest

from morphtransfer.data.preprocess import (
    PreprocessError,
    area_weights,
    crop_box,
    preprocess_batch,
    preprocess_cutout,
    resample_area,
)


def test_resample_area_integer_factor_is_block_mean():
    img = np.arange(16, dtype=float).reshape(4, 4)
    out = resample_area(img, 2)
    # blocks {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}
    np.testing.assert_allclose(out, [[2.5, 4.5], [10.5, 12.5]], rtol=0, atol=1e-6)


def test_resample_area_fractional_footprint_by_hand():
    # 3 -> 2: output pixel 0 covers input [0, 1.5): pixel 0 fully, pixel 1 half -> weights 2/3, 1/3
    img = np.arange(9, dtype=float).reshape(3, 3)
    w = area_weights(3, 2)
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-12)
    # out[0,0] = 4/9*0 + 2/9*1 + 2/9*3 + 1/9*4 = 12/9
    out = resample_area(img, 2)
    np.testing.assert_allclose(out, [[12 / 9, 24 / 9], [48 / 9, 60 / 9]], atol=1e-5)


def test_resample_area_conserves_mean_and_does_not_alias():
    rng = np.random.default_rng(0)
    img = rng.random((3, 423, 423))
    out = resample_area(img, 69)
    assert out.shape == (3, 69, 69) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(1, 2)), img.mean(axis=(1, 2)), rtol=1e-5)
    # a pixel-scale checkerboard (the highest frequency) must average out to ~0.5 everywhere;
    # point sampling at 423/69 = 6.13 px steps would return a pattern of 0s and 1s.
    yy, xx = np.indices((423, 423))
    checker = ((yy + xx) % 2).astype(float)
    small = resample_area(checker, 69)
    assert np.abs(small - 0.5).max() < 0.03
    sampled = checker[(np.arange(69) * 423 // 69)][:, (np.arange(69) * 423 // 69)]
    assert np.abs(sampled - 0.5).max() == 0.5  # what aliasing looks like


def test_crop_box_ten_r90_centred_and_clipped():
    # 10 x R90 = 10 x 2" at 1"/px = 20 px, centred on a 40 x 40 image
    assert crop_box((40, 40), 1.0, 2.0) == (10.0, 30.0, 10.0, 30.0)
    # fractional side 2.5 px on 5 px: [1.25, 3.75)
    assert crop_box((5, 5), 1.0, 0.25) == (1.25, 3.75, 1.25, 3.75)
    # larger than the image: clipped to the image
    assert crop_box((40, 40), 1.0, 100.0) == (0.0, 40.0, 0.0, 40.0)
    # unknown R90 or scale: whole image; not square: central square
    assert crop_box((40, 40), None, 2.0) == (0.0, 40.0, 0.0, 40.0)
    assert crop_box((40, 40), 0.396, float("nan")) == (0.0, 40.0, 0.0, 40.0)
    assert crop_box((30, 50), None, None) == (0.0, 30.0, 10.0, 40.0)


def test_preprocess_cutout_hand_example():
    # 2 bands, 6 x 6; pixel scale 1", R90 0.4" -> crop side 4 px = rows/cols 1..4; 4 -> 2 px.
    band0 = np.arange(36, dtype=float).reshape(6, 6)
    band1 = np.full((6, 6), 3.0)
    band1[1:3, 1:3] = 7.0  # the top-left 2x2 block of the crop
    out = preprocess_cutout(
        np.stack([band0, band1]), pixel_scale_arcsec=1.0, r90_arcsec=0.4, size=2
    )
    # band0 block means of rows/cols 1..4: [[10.5, 12.5], [22.5, 24.5]], / max 24.5
    np.testing.assert_allclose(out[0], np.array([[10.5, 12.5], [22.5, 24.5]]) / 24.5, atol=1e-6)
    # band1 block means: [[7, 3], [3, 3]] / 7
    np.testing.assert_allclose(out[1], np.array([[1.0, 3 / 7], [3 / 7, 3 / 7]]), atol=1e-6)


def test_fractional_crop_weights_edge_pixels():
    # 1-D profile 0..4 across a 5-px image; crop side 2.5 px -> [1.25, 3.75) -> one output pixel:
    # (0.75*1 + 1*2 + 0.75*3) / 2.5 = 2.0 in that direction
    img = np.tile(np.arange(5, dtype=float), (5, 1))[None] + 1.0  # columns 1..5
    out = resample_area(img, 1, crop_box((5, 5), 1.0, 0.25))
    assert out[0, 0, 0] == pytest.approx((0.75 * 2 + 3 + 0.75 * 4) / 2.5)


def test_per_band_maximum_and_scale_invariance():
    rng = np.random.default_rng(1)
    img = rng.random((3, 100, 100)) + 0.1
    out = preprocess_cutout(img)
    np.testing.assert_allclose(out.reshape(3, -1).max(axis=1), 1.0)
    scaled = img * np.array([7.0, 0.01, 300.0])[:, None, None]
    np.testing.assert_allclose(preprocess_cutout(scaled), out, rtol=1e-5)


def test_bad_pixels_raise_preprocess_error():
    img = np.ones((3, 50, 50))
    bad = img.copy()
    bad[1, 3, 3] = np.nan
    with pytest.raises(PreprocessError, match="NaN/inf"):
        preprocess_cutout(bad)
    bad = img.copy()
    bad[2, 0, 0] = np.inf
    with pytest.raises(PreprocessError, match="NaN/inf"):
        preprocess_cutout(bad)
    zero = img.copy()
    zero[2] = 0.0
    with pytest.raises(PreprocessError, match=r"band\(s\) \[2\]"):
        preprocess_cutout(zero)
    with pytest.raises(PreprocessError, match="shape"):
        preprocess_cutout(np.ones((50, 50)))


def test_batch_matches_single_and_per_galaxy_r90():
    rng = np.random.default_rng(2)
    imgs = rng.random((4, 3, 80, 80)) + 0.01
    one = np.stack([preprocess_cutout(im) for im in imgs])
    np.testing.assert_allclose(preprocess_batch(imgs), one, atol=1e-6)
    r90 = np.array([2.0, 3.0, 4.0, np.nan])
    per = np.stack([preprocess_cutout(im, 0.5, r) for im, r in zip(imgs, r90)])
    np.testing.assert_allclose(preprocess_batch(imgs, 0.5, r90), per, atol=1e-6)
