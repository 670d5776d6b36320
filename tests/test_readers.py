"""Readers on the real fixture formats, plus the bad files a user will hand us."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from morphtransfer.data.preprocess import resample_area
from morphtransfer.data.readers import (
    ReadError,
    composite_channels,
    read_composite,
    read_cutout,
    read_fits_bands,
    read_fits_cube,
)
from morphtransfer.errors import InputError

GZ1_JPEG = "sdss_gz1/images/587722953303916935.jpeg"
DECALS_PNG = "fixtures/galaxy_zoo_decals/gz_decals_dr5_png_part1/J004/J004544.11-005037.5.png"


def _write_cube(path, data, bands=None, cd_deg=None):
    hdr = fits.Header()
    if bands:
        for i, b in enumerate(bands):
            hdr[f"BAND{i}"] = b
    if cd_deg:
        n = data.shape[-1]
        hdr.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0,
                   CRPIX1=n / 2, CRPIX2=n / 2, CD1_1=-cd_deg, CD1_2=0.0, CD2_1=0.0, CD2_2=cd_deg)
    fits.PrimaryHDU(data.astype(np.float32), header=hdr).writeto(path)


def test_sdss_jpeg_bands_are_reversed_rgb(shared_data):
    path = shared_data / GZ1_JPEG
    rgb = np.asarray(Image.open(path).convert("RGB"))
    cut = read_composite(path, ("i", "r", "g"), bands=("g", "r", "i"))
    assert cut.bands == ("g", "r", "i") and cut.data.shape == (3, 423, 423)
    assert cut.data.dtype == np.float32
    np.testing.assert_array_equal(cut.data[0], rgb[:, :, 2])  # g is the blue channel
    np.testing.assert_array_equal(cut.data[2], rgb[:, :, 0])  # i is the red channel
    # explicit other order
    cut2 = read_cutout(path, bands=("i", "g"), survey="sdss")
    np.testing.assert_array_equal(cut2.data[0], rgb[:, :, 0])
    with pytest.raises(InputError, match="'z'"):
        read_composite(path, ("i", "r", "g"), bands=("g", "r", "z"))


def test_decals_png_channels(shared_data):
    path = shared_data / DECALS_PNG
    rgb = np.asarray(Image.open(path).convert("RGB"))
    cut = read_cutout(path, survey="decals")
    assert cut.bands == ("g", "r", "z") and cut.data.shape == (3, 424, 424)
    np.testing.assert_array_equal(cut.data[2], rgb[:, :, 0])


def test_jpeg_dct_draft_is_close_to_full_decode(shared_data):
    path = shared_data / GZ1_JPEG
    full = read_composite(path, ("i", "r", "g"))
    fast = read_composite(path, ("i", "r", "g"), min_size=138)
    assert fast.data.shape == (3, 212, 212)  # 1/2 DCT scale keeps >= 138 px
    assert fast.reduction == pytest.approx(212 / 423)
    a, b = resample_area(full.data, 69), resample_area(fast.data, 69)
    # DCT scaling is an area-like average: the 69 x 69 inputs agree to ~1 grey level
    assert np.abs(a - b).mean() < 1.0
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.995
    # with a small crop the decoder keeps full resolution where it is needed
    crop = read_composite(path, ("i", "r", "g"), min_size=138, crop_px=150)
    assert crop.data.shape == (3, 423, 423)


def test_unknown_colour_scheme_is_an_input_error():
    with pytest.raises(InputError, match="R, G, B"):
        composite_channels("euclid")
    assert composite_channels("euclid", ["h", "j", "y"]) == ("h", "j", "y")


def test_fits_cube_bands_from_header_and_wcs_scale(tmp_path):
    data = np.stack([np.full((20, 20), k, dtype=np.float32) for k in (1.0, 2.0, 3.0)])
    p = tmp_path / "ls.fits"
    _write_cube(p, data, bands=["g", "r", "z"], cd_deg=0.262 / 3600)
    cut = read_fits_cube(p)
    assert cut.bands == ("g", "r", "z")
    assert cut.pixel_scale_arcsec == pytest.approx(0.262, rel=1e-6)
    sel = read_cutout(p, bands=("z", "g"))
    assert sel.bands == ("z", "g") and sel.data[:, 0, 0].tolist() == [3.0, 1.0]
    with pytest.raises(InputError, match="'i'"):
        read_fits_cube(p, bands=("g", "r", "i"))


def test_fits_cube_without_band_names_needs_file_bands(tmp_path):
    p = tmp_path / "cube.fits"
    _write_cube(p, np.ones((3, 10, 10)))
    with pytest.raises(InputError, match="file_bands"):
        read_fits_cube(p)
    cut = read_fits_cube(p, file_bands=("g", "r", "i"), bands=("i",))
    assert cut.bands == ("i",) and cut.pixel_scale_arcsec is None


def test_one_fits_file_per_band(tmp_path):
    paths = {}
    for k, b in enumerate("gri"):
        paths[b] = tmp_path / f"{b}.fits"
        _write_cube(paths[b], np.full((12, 12), k + 1.0), cd_deg=0.396 / 3600)
    cut = read_fits_bands(paths, bands=("g", "r", "i"))
    assert cut.data.shape == (3, 12, 12) and cut.data[:, 5, 5].tolist() == [1.0, 2.0, 3.0]
    assert cut.pixel_scale_arcsec == pytest.approx(0.396, rel=1e-6)
    _write_cube(tmp_path / "big.fits", np.ones((14, 14)))
    paths["i"] = tmp_path / "big.fits"
    with pytest.raises(ReadError, match="differ in shape"):
        read_fits_bands(paths)


def test_bad_files_raise_read_error(tmp_path, shared_data):
    good = (shared_data / GZ1_JPEG).read_bytes()
    trunc = tmp_path / "trunc.jpeg"
    trunc.write_bytes(good[: len(good) // 3])
    with pytest.raises(ReadError, match="cannot decode"):
        read_composite(trunc)
    html = tmp_path / "err.fits"
    html.write_bytes(b"<!DOCTYPE html><html><body>500 Internal Server Error</body></html>")
    with pytest.raises(ReadError, match="not a readable FITS"):
        read_fits_cube(html, file_bands=("g",))
    with pytest.raises(ReadError, match="not found"):
        read_composite(tmp_path / "missing.jpeg")
    # a FITS cut short in its data section
    p = tmp_path / "ok.fits"
    _write_cube(p, np.ones((3, 64, 64)), bands=list("grz"))
    short = tmp_path / "short.fits"
    short.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(ReadError):
        read_fits_cube(short)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(gray)
    with pytest.raises(ReadError, match="single-channel"):
        read_composite(gray)
    with pytest.raises(ReadError, match="unknown image type"):
        read_cutout(tmp_path / "x.tiff", survey="sdss")
