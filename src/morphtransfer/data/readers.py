"""Read cutouts into float32 arrays (bands, H, W) with an explicit band order, never a guess.

Formats:

* **FITS cube**: one HDU holding (bands, H, W). Which plane is which band comes from the header
  (Legacy Survey cutouts write ``BAND0 = 'g'``, ``BAND1 = 'r'``, ... and ``BANDS = 'grz'``) or
  from ``file_bands`` given by the caller. Neither -> InputError.
* **FITS, one file per band**: ``{band: path}``; all planes must share one shape.
* **JPEG / PNG colour composites** (SDSS SkyServer, Galaxy Zoo): three 8-bit channels R, G, B,
  each a display-stretched image of one band. Which band sits in which channel is a property of
  the service that made the picture, recorded in COMPOSITE_CHANNELS (or given by the caller):
  SDSS SkyServer composites put i, r, g in R, G, B (Lupton et al. 2004 colour scheme; data
  README); Legacy Survey / GZ DECaLS composites put z, r, g in R, G, B (Dey et al. 2019).
  Composite pixel values are display-stretched (asinh), not fluxes: the per-band maximum
  normalisation of preprocessing is what the model sees either way.

Every reader returns a ``Cutout`` and raises ``ReadError`` (a per-galaxy problem that ingest puts in
the rejects table) for an unreadable, truncated or wrongly shaped file; InputError for a caller
mistake (unknown band, no band information).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphtransfer.errors import InputError
from morphtransfer.surveys import SURVEYS

# Band in the (R, G, B) channels of each cutout service's colour composites: the Survey table's
# image products (SkyServer ImgCutout, Lupton et al. 2004: R=i, G=r, B=g, also the GZ1, GZ2 and
# Kaggle challenge images; Legacy Survey viewer / GZ DECaLS, Dey et al. 2019: R=z, G=r, B=g, and
# i in red for the des-dr1 layer).
COMPOSITE_CHANNELS: dict[str, tuple[str, str, str]] = {
    name: sv.image_product.channels for name, sv in SURVEYS.items() if sv.image_product is not None
}

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
FITS_SUFFIXES = {".fits", ".fit", ".fts", ".fits.gz", ".fits.fz", ".fz"}


class ReadError(ValueError):
    """A cutout file cannot be read (corrupt, truncated, wrong shape); goes to the rejects table."""


@dataclass
class Cutout:
    """Pixels (bands, H, W) float32, the band of each plane, and the pixel scale when known."""

    data: np.ndarray
    bands: tuple[str, ...]
    pixel_scale_arcsec: float | None = None
    path: str = ""
    # decoded size / stored size (< 1 when a JPEG was decoded at 1/2, 1/4, 1/8 by its DCT)
    reduction: float = 1.0

    def select(self, bands: list[str] | tuple[str, ...]) -> Cutout:
        """The same cutout with planes in the requested band order (InputError if one is absent)."""
        bands = tuple(bands)
        if bands == self.bands:
            return self
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise InputError(
                f"{self.path or 'cutout'} has bands {list(self.bands)}, not {missing}; ask for "
                f"bands among {list(self.bands)} (--bands) or supply files with those bands"
            )
        idx = [self.bands.index(b) for b in bands]
        return Cutout(self.data[idx], bands, self.pixel_scale_arcsec, self.path, self.reduction)


def is_fits(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in FITS_SUFFIXES)


def composite_channels(survey: str | None, channel_bands=None) -> tuple[str, str, str]:
    """The band in each of R, G, B: given explicitly, or the survey's cutout-service convention."""
    if channel_bands is not None:
        cb = tuple(channel_bands)
        if len(cb) != 3:
            raise InputError(f"channel_bands must name the band of R, G and B, got {list(cb)}")
        return cb  # type: ignore[return-value]
    key = (survey or "").lower()
    if key not in COMPOSITE_CHANNELS:
        raise InputError(
            f"no known colour scheme for composites of survey {survey!r}; say which band is in "
            "R, G, B (e.g. --channels i,r,g for SDSS SkyServer, z,r,g for Legacy Survey)"
        )
    return COMPOSITE_CHANNELS[key]


# --- JPEG / PNG -------------------------------------------------------------------------------
def read_composite(
    path: str | os.PathLike,
    channel_bands=("i", "r", "g"),
    bands=None,
    min_size: int | None = None,
    crop_px: float | None = None,
) -> Cutout:
    """Read a JPEG/PNG colour composite into (bands, H, W) float32 in [0, 255].

    ``channel_bands``: the band in R, G, B (SDSS SkyServer: i, r, g). ``bands``: the output order
    (default: the channel bands sorted blue to red as in the survey, i.e. reversed RGB).
    ``min_size``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale by its DCT (Pillow's draft mode) as
    long as both sides stay >= min_size pixels. DCT scaling keeps the block's low frequencies,
    a legitimate area-like downscale, and is 3-4x faster than a full decode. The returned
    ``pixel_scale_arcsec`` is None (unknown: composites carry no WCS); ``Cutout.reduction`` is the
    decoded / stored size ratio (a known scale must be divided by it). ``crop_px``: the side (in
    stored pixels) of the part that will be used; the DCT reduction keeps that part >= min_size.
    """
    from PIL import Image

    channel_bands = tuple(channel_bands)
    order = tuple(bands) if bands is not None else tuple(reversed(channel_bands))
    try:
        with Image.open(path) as im:
            full_w = im.size[0]
            if min_size and im.format == "JPEG":
                used = min(float(crop_px), full_w) if crop_px else float(full_w)
                want = int(np.ceil(min_size * full_w / max(used, 1.0)))
                if want < full_w:
                    im.draft("RGB", (want, want))
            if im.mode != "RGB":
                if im.mode in ("L", "I", "I;16", "F") or im.mode.startswith("I;"):
                    raise ReadError(f"{path}: single-channel image (mode {im.mode}), expected RGB")
                im = im.convert("RGB")
            arr = np.asarray(im)
    except ReadError:
        raise
    except FileNotFoundError as exc:
        raise ReadError(f"{path}: file not found") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... on bad files
        raise ReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ReadError(f"{path}: expected an RGB image, got array shape {arr.shape}")
    missing = [b for b in order if b not in channel_bands]
    if missing:
        raise InputError(
            f"{path}: composite channels hold bands {list(channel_bands)}, not {missing}"
        )
    idx = [channel_bands.index(b) for b in order]
    data = np.ascontiguousarray(arr.transpose(2, 0, 1)[idx]).astype(np.float32)
    return Cutout(data, order, None, str(path), reduction=arr.shape[1] / full_w)


# --- FITS -------------------------------------------------------------------------------------
def _header_bands(header, n: int) -> tuple[str, ...] | None:
    keys = [f"BAND{i}" for i in range(n)]
    if all(k in header for k in keys):
        return tuple(str(header[k]).strip() for k in keys)
    if "BANDS" in header and len(str(header["BANDS"]).strip()) == n:
        return tuple(str(header["BANDS"]).strip())
    if n == 1:
        for k in ("BAND", "FILTER"):
            if k in header:
                return (str(header[k]).strip(),)
    return None


def _pixel_scale_from_header(header) -> float | None:
    try:
        from astropy.wcs import WCS
        from astropy.wcs.utils import proj_plane_pixel_scales

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header).celestial
        if not wcs.has_celestial:
            return None
        scales = proj_plane_pixel_scales(wcs) * 3600.0  # deg -> arcsec
        s = float(np.mean(scales))
        return s if np.isfinite(s) and s > 0 else None
    except Exception:
        return None


def _first_image_hdu(path):
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*truncated.*")
            hdul = fits.open(path, memmap=False)
    except FileNotFoundError as exc:
        raise ReadError(f"{path}: file not found") from exc
    except Exception as exc:
        raise ReadError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    try:
        with warnings.catch_warnings():
            # astropy only warns "File may have been truncated"; a short file is a bad file here
            warnings.filterwarnings("error", message=".*truncated.*")
            for hdu in hdul:
                if getattr(hdu, "data", None) is not None and hdu.is_image and hdu.data.ndim >= 2:
                    data = np.asarray(hdu.data, dtype=np.float32)
                    return data, hdu.header.copy()
    except Exception as exc:  # truncated data raises on access
        raise ReadError(f"{path}: truncated or corrupt FITS data ({type(exc).__name__}: {exc})")
    finally:
        hdul.close()
    raise ReadError(f"{path}: no image HDU in the FITS file")


def read_fits_cube(
    path: str | os.PathLike, bands=None, file_bands=None, pixel_scale_arcsec: float | None = None
) -> Cutout:
    """Read a multi-band FITS cube (bands, H, W), e.g. a Legacy Survey cutout.

    The band of each plane comes from ``file_bands`` if given, else from the header (BAND0..,
    BANDS). ``bands`` selects and orders the output planes. The pixel scale comes from the WCS
    when present unless ``pixel_scale_arcsec`` overrides it.
    """
    data, header = _first_image_hdu(path)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ReadError(f"{path}: expected a (bands, H, W) cube, got shape {data.shape}")
    n = data.shape[0]
    names = tuple(file_bands) if file_bands is not None else _header_bands(header, n)
    if names is None:
        raise InputError(
            f"{path}: the header does not say which band each of its {n} planes is (no BAND0.. "
            "or BANDS keywords); pass the bands in file order (file_bands / --file-bands g,r,z)"
        )
    if len(names) != n:
        raise ReadError(f"{path}: {n} planes but {len(names)} band names {list(names)}")
    scale = pixel_scale_arcsec
    if scale is None:
        scale = _pixel_scale_from_header(header)
    cut = Cutout(np.ascontiguousarray(data), tuple(names), scale, str(path))
    return cut.select(bands) if bands is not None else cut


def read_fits_bands(
    paths_by_band: dict[str, str | os.PathLike], bands=None, pixel_scale_arcsec: float | None = None
) -> Cutout:
    """Read one single-band FITS file per band and stack them in ``bands`` order."""
    order = tuple(bands) if bands is not None else tuple(paths_by_band)
    missing = [b for b in order if b not in paths_by_band]
    if missing:
        raise InputError(f"no FITS file given for band(s) {missing}; give one path per band")
    planes, scale = [], pixel_scale_arcsec
    for b in order:
        data, header = _first_image_hdu(paths_by_band[b])
        data = np.squeeze(data)
        if data.ndim != 2:
            raise ReadError(f"{paths_by_band[b]}: expected one 2-D image, got shape {data.shape}")
        planes.append(data)
        if scale is None:
            scale = _pixel_scale_from_header(header)
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise ReadError(
            f"band images differ in shape {[p.shape for p in planes]} "
            f"({', '.join(str(paths_by_band[b]) for b in order)})"
        )
    return Cutout(np.stack(planes).astype(np.float32), order, scale, str(paths_by_band[order[0]]))


def read_cutout(
    path,
    bands=None,
    survey: str | None = None,
    channel_bands=None,
    file_bands=None,
    min_size: int | None = None,
) -> Cutout:
    """Read any supported cutout by its suffix: FITS cube, or JPEG/PNG composite.

    ``path`` may also be a dict {band: path} of single-band FITS files. For composites the channel
    bands come from ``channel_bands`` or the survey's convention (COMPOSITE_CHANNELS).
    """
    if isinstance(path, dict):
        return read_fits_bands(path, bands)
    p = Path(path)
    if is_fits(p):
        return read_fits_cube(p, bands=bands, file_bands=file_bands)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        cb = composite_channels(survey, channel_bands)
        return read_composite(p, cb, bands=bands, min_size=min_size)
    raise ReadError(f"{p}: unknown image type {p.suffix!r}; use FITS, JPEG or PNG")
