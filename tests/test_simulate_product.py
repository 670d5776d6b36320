"""The served image product: each survey's colour stretch, 8 bits and JPEG (simulate/product.py)."""

import dataclasses
import math

import numpy as np
import pytest

from morphtransfer.errors import InputError
from morphtransfer.simulate.product import jpeg_roundtrip, serve, to_rgb
from morphtransfer.surveys import ImageProduct, get_survey

DES = get_survey("des").image_product
SDSS = get_survey("sdss").image_product


def test_legacy_viewer_stretch_follows_legacypipe_sdss_rgb():
    bands = ("g", "r", "i")
    flux = np.zeros((3, 1, 4))
    flux[:, 0, 1] = [0.01, 0.02, 0.03]
    flux[:, 0, 2] = [0.5, 1.0, 1.5]
    flux[:, 0, 3] = [100.0, 100.0, 100.0]
    rgb = to_rgb(flux, bands, DES)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    # empty sky: every channel m * asinh(Q m) / sqrt(Q) / m = asinh(0.6) / sqrt(20) -> 32 of 255
    assert rgb[0, 0].tolist() == [round(255 * math.asinh(0.6) / math.sqrt(20))] * 3 == [32] * 3
    # by hand for a faint pixel: scales g 6.0, r 3.4, i 3.0, R = i, G = r, B = g
    x = {"g": 0.01 * 6.0 + 0.03, "r": 0.02 * 3.4 + 0.03, "i": 0.03 * 3.0 + 0.03}
    mean = sum(x.values()) / 3
    f = math.asinh(20 * mean) / math.sqrt(20) / mean
    assert rgb[0, 1].tolist() == [round(255 * x[b] * f) for b in ("i", "r", "g")]
    # a bright core saturates every channel (clipped one by one)
    assert rgb[0, 3].tolist() == [255, 255, 255]
    assert rgb[0, 2, 0] > rgb[0, 1, 0]


def test_lupton_stretch_keeps_colours_and_is_astropys():
    from astropy.visualization import make_lupton_rgb

    rng = np.random.default_rng(0)
    flux = rng.uniform(0.0, 0.3 * SDSS.stretch, size=(3, 32, 32))
    rgb = to_rgb(flux, ("g", "r", "i"), SDSS)
    sg, sr, si = SDSS.band_scales
    ref = make_lupton_rgb(flux[2] * si, flux[1] * sr, flux[0] * sg, minimum=0.0,
                          stretch=SDSS.stretch, Q=SDSS.Q)
    assert np.abs(rgb.astype(int) - ref).max() <= 1  # float32 here, float64 in astropy
    # colour preserving: channel ratios follow the flux ratios (up to 8-bit rounding)
    big = (rgb[..., 0] > 30) & (rgb[..., 2] > 30) & (rgb.max(axis=-1) < 255)
    assert big.sum() >= 10
    ratio = rgb[..., 0].astype(float)[big] / rgb[..., 2][big]
    assert np.allclose(ratio, (flux[2] * si / (flux[0] * sg))[big], rtol=0.06)


def test_noise_is_drawn_per_native_pixel_so_binned_stamps_keep_the_clipped_sky_level():
    """Clipping the negative half of the sky noise lifts an empty sky to ~0.4 sigma (Lupton):
    a stamp drawn with 3 x 3 binned pixels must show the same background level and a noise
    sqrt(9) = 3 times smaller, as averaging nine native pixels of the served image would."""
    bands = ("g", "r", "i")
    sky = np.array([0.05, 0.05, 0.05])
    gain = np.array([100.0, 100.0, 100.0])
    product = dataclasses.replace(SDSS, jpeg_quality=0, stretch=0.1)
    levels, noises = {}, {}
    for binning in (1, 3):
        models = np.zeros((3, 101, 101))
        out = serve(models, bands, product, binning, sky, gain, np.random.default_rng(1))
        levels[binning], noises[binning] = out.mean(), out.std()
    assert levels[1] > 5  # the clipped sky is well above black
    assert levels[3] == pytest.approx(levels[1], rel=0.05)
    assert noises[3] == pytest.approx(noises[1] / 3, rel=0.15)
    # averaging first and stretching after would have dimmed the sky about threefold
    mean_first = serve(np.zeros((3, 101, 101)), bands, product, 1, sky / 3, gain,
                       np.random.default_rng(1)).mean()
    assert mean_first < 0.5 * levels[3]


def test_jpeg_roundtrip_is_lossy_only_a_little():
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:64, 0:64] - 32
    smooth = (200 * np.exp(-(x * x + y * y) / 200.0))[..., None].repeat(3, axis=-1)
    img = np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8)
    assert np.array_equal(jpeg_roundtrip(img, 0), img)
    out = jpeg_roundtrip(img, 75)
    assert out.shape == img.shape and out.dtype == np.uint8
    err = np.abs(out.astype(float) - img)
    assert 0 < err.mean() < 4


def test_bad_products_are_refused_with_the_reason():
    with pytest.raises(InputError, match="kind"):
        ImageProduct(kind="gamma", channels=("i", "r", "g"), band_scales=(1, 1, 1), Q=8)
    with pytest.raises(InputError, match="> 0"):
        ImageProduct(kind="lupton", channels=("i", "r", "g"), band_scales=(1, 1, 1), Q=0)
    with pytest.raises(InputError, match="not in"):
        to_rgb(np.zeros((3, 2, 2)), ("g", "r", "z"), SDSS)
    with pytest.raises(InputError, match="band scales"):
        to_rgb(np.zeros((2, 2, 2)), ("g", "r"), SDSS)


def test_desaccess_product_is_astropys_lupton_on_coadd_counts_with_a_dark_sky():
    """DES's own cutout service: make_lupton_rgb(minimum 1.0, stretch 50, Q 10) on coadd counts
    (zero point 30: 1,000 counts per nanomaggy), PNG. The same DES sky noise that the Legacy
    viewer's composite lifts to 32/255 stays dark, and the galaxy pixels match astropy's."""
    from astropy.visualization import make_lupton_rgb

    dess = get_survey("des_desaccess")
    prod = dess.image_product
    assert (prod.kind, prod.minimum, prod.stretch, prod.Q, prod.jpeg_quality) == ("lupton", 1.0, 50.0, 10.0, 0)
    assert dess.band_names == get_survey("des").band_names
    assert dess.pixel_scale_arcsec == get_survey("des").pixel_scale_arcsec
    rng = np.random.default_rng(3)
    sigma = np.array([get_survey("des").sky_noise_per_pixel(b) for b in "gri"])
    flux = rng.normal(0.0, 1.0, size=(3, 64, 64)) * sigma[:, None, None]
    flux[:, 28:36, 28:36] += np.array([0.2, 0.4, 0.6])[:, None, None]  # a red galaxy core
    counts = flux * 1000.0
    ref = make_lupton_rgb(counts[2], counts[1], counts[0], minimum=1.0, stretch=50.0, Q=10.0)
    rgb = to_rgb(flux, ("g", "r", "i"), prod)
    assert np.abs(rgb.astype(int) - ref).max() <= 1
    sky = np.r_[rgb[:10].reshape(-1, 3), rgb[-10:].reshape(-1, 3)]
    legacy_sky = to_rgb(flux, ("g", "r", "i"), DES)[:10].reshape(-1, 3)
    assert np.median(sky) < 8 and np.median(legacy_sky) >= 30
    assert rgb[32, 32, 0] > rgb[32, 32, 2]  # R = i brighter than B = g for a red core
