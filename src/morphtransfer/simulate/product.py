"""The image a survey's cutout service serves: fluxes -> non-linear colour stretch -> 8 bits -> JPEG.

The study (and every Galaxy Zoo-trained CNN) does not see fluxes. It sees each survey's served
colour composite: for SDSS the SkyServer JPEG (Lupton et al. 2004 asinh, R = i, G = r, B = g),
for DES the Legacy Survey viewer's ``des-dr1`` layer (legacypipe's ``sdss_rgb``: per-band scales,
a softening offset ``m``, ``asinh(Q I) / sqrt(Q)``, R = i, G = r, B = g). Both are clipped to
8 bits and JPEG-compressed. (``des_desaccess``: the same DES data as DES's own cutout service
serves them, astropy's Lupton asinh on the coadd counts, saved as PNG; surveys.py.) The stretch differs between the surveys and is not undone by the
study's per-band maximum normalisation: the same galaxy has a different light profile, a
different saturated core and a different background texture in the two products. That is one of
the differences between surveys that a model trained on one meets in the other, and the simulator
renders it with the survey's own recipe (``Survey.image_product``).

Noise and binned stamps: the stretch is non-linear, so it must act on native survey pixels, each
with its own noise (clipping the negative half of the sky noise lifts the background; averaging
first would not). A stamp drawn with ``binning`` x ``binning`` native pixels per render pixel
(render.py, large galaxies) is therefore expanded here: every native pixel takes its render
pixel's mean model flux (the model is smooth on that scale: the PSF is sampled there) with its
own sky and Poisson noise, is stretched and quantised, and the binning x binning native values
are averaged back, which is what the study's area-averaging to 69 x 69 pixels would do with them.
JPEG compression is applied to the result at render resolution (the blocks of a native-resolution
JPEG would be finer still; both are far below the 69-pixel model input).

Parameters: DES from legacypipe (``survey.py``, ``sdss_rgb`` defaults g 6.0, r 3.4, i 3.0,
m = 0.03, Q = 20). SDSS: the SkyServer recipe's band scales and softening are not published in
nanomaggies; they are calibrated so that simulated SDSS cutouts, after the study's preprocessing,
match the real SkyServer JPEGs in ``../shared/data/sdss_gz1`` in background level and noise,
saturated-core size and the area above 10% and 50% of the peak (benchmarks/image_product_calibration.py;
the measured figures are in docs/simulator.md).
"""

from __future__ import annotations

import io

import numpy as np

from morphtransfer.errors import InputError
from morphtransfer.surveys import ImageProduct


def stretch_channels(fluxes: np.ndarray, bands, product: ImageProduct) -> np.ndarray:
    """(bands, ..., H, W) nanomaggies per native pixel -> (3, ..., H, W) R, G, B in [0, 1]."""
    bands = tuple(bands)
    if len(product.band_scales) != len(bands):
        raise InputError(f"image product has {len(product.band_scales)} band scales for bands "
                         f"{bands}")
    if sorted(bands) != sorted(product.channels):
        raise InputError(f"image product shows bands {product.channels}, not in the images' bands "
                         f"{bands} one for one")
    idx = [bands.index(c) for c in product.channels]
    scales = np.asarray([product.band_scales[j] for j in idx], dtype=np.float32)
    rgb = np.asarray(fluxes, dtype=np.float32)[idx] * scales.reshape((3,) + (1,) * (fluxes.ndim - 1))
    if product.kind == "lupton":
        from astropy.visualization import make_lupton_rgb

        shape = rgb.shape[1:]
        flat = rgb.reshape(3, -1, shape[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            out = make_lupton_rgb(*flat, minimum=product.minimum, stretch=product.stretch,
                                  Q=product.Q, output_dtype=np.float64)
        return np.moveaxis(out.astype(np.float32), -1, 0).reshape((3,) + shape)
    # legacypipe sdss_rgb: I = mean(max(0, x s + m)); channel = (x s + m) asinh(Q I)/sqrt(Q) / I,
    # each channel clipped to [0, 1]
    rgb += np.float32(product.offset)
    intensity = np.maximum(rgb, 0.0).sum(axis=0)
    intensity /= 3.0
    f = np.arcsinh(np.float32(product.Q) * intensity)
    f /= np.float32(np.sqrt(product.Q))
    intensity[intensity <= 0] = 1e-6
    f /= intensity
    rgb *= f
    return np.clip(rgb, 0.0, 1.0, out=rgb)


def to_rgb(fluxes: np.ndarray, bands, product: ImageProduct) -> np.ndarray:
    """(bands, ..., H, W) nanomaggies per native pixel -> (..., H, W, 3) uint8 RGB, as served
    (see _to_8bit)."""
    return np.moveaxis(_to_8bit(stretch_channels(fluxes, bands, product), product), 0, -1)


def _to_8bit(rgb: np.ndarray, product: ImageProduct) -> np.ndarray:
    """[0, 1] -> uint8 as the service does it: astropy's Lupton truncates, legacypipe rounds."""
    rgb = rgb * np.float32(255.0)
    return (np.floor(rgb) if product.kind == "lupton" else np.round(rgb)).astype(np.uint8)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode (H, W, 3) uint8 as a JPEG of the given quality with Pillow and decode it again."""
    if quality <= 0:
        return rgb
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def serve(
    models: np.ndarray,
    bands,
    product: ImageProduct,
    binning: int,
    sky_sigma: np.ndarray,
    electrons_per_nanomaggy: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Noise-free stamps (bands, H, W) in nanomaggies per render pixel -> the served product as
    (bands, H, W) float32 in [0, 255], bands in the survey's order (as data.readers returns a
    composite).

    ``sky_sigma`` and ``electrons_per_nanomaggy``: per band, for one *native* pixel. Noise is drawn
    per native pixel (binning^2 of them per render pixel), stretched, quantised and averaged back.
    """
    bands = tuple(bands)
    nb = len(bands)
    b2 = int(binning) ** 2
    models = np.asarray(models, dtype=np.float32)
    # flux per native pixel and its noise: sky + the galaxy's Poisson noise
    mean = models / np.float32(b2)
    sigma = np.sqrt(
        np.asarray(sky_sigma, np.float32)[:, None, None] ** 2
        + np.maximum(mean, 0.0) / np.asarray(electrons_per_nanomaggy, np.float32)[:, None, None]
    )
    pixels = rng.standard_normal((nb, b2) + models.shape[1:], dtype=np.float32)
    pixels *= sigma[:, None]
    pixels += mean[:, None]
    rgb = stretch_channels(pixels, bands, product).mean(axis=1)  # (3, H, W) in [0, 1]
    rgb = np.ascontiguousarray(np.moveaxis(_to_8bit(rgb, product), 0, -1))
    rgb = jpeg_roundtrip(rgb, product.jpeg_quality)
    out = np.empty((nb,) + models.shape[1:], dtype=np.float32)
    for j, band in enumerate(bands):
        out[j] = rgb[..., product.channels.index(band)]
    return out
