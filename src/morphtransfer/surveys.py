"""The Survey table: one row of data per imaging survey, read by the simulator, the downloader and
the reports alike.

Fluxes are in nanomaggies (AB zero point 22.5, the SDSS / Legacy Survey convention):
``flux = 10 ** (-0.4 * (mag - 22.5))``.

Noise model ("equivalent noise model" of the survey's depth): every band quotes a point-source
limiting magnitude ``depth_mag`` at ``depth_sigma`` sigma, a sky surface brightness and a PSF FWHM.
For a sky-dominated point source measured with the optimal (PSF-weighted) filter, the S/N is
``F / (sigma_pix * sqrt(n_eff))`` with ``n_eff = 4 pi sigma_psf**2 / pixel**2`` pixels (Gaussian
PSF). Setting S/N = depth_sigma at F = flux(depth_mag) fixes the sky noise per pixel; requiring that
noise to be the Poisson noise of the sky then fixes the number of electrons per nanomaggy (the
effective gain x exposure). Galaxy light then adds its own Poisson noise with that same gain.
The numbers that define each survey are quoted with their source; everything else is derived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from morphtransfer.errors import InputError

NANOMAGGY_ZEROPOINT = 22.5
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def mag_to_flux(mag: float) -> float:
    """AB magnitude -> flux in nanomaggies."""
    return 10.0 ** (-0.4 * (mag - NANOMAGGY_ZEROPOINT))


def flux_to_mag(flux: float) -> float:
    """Flux in nanomaggies -> AB magnitude."""
    return NANOMAGGY_ZEROPOINT - 2.5 * math.log10(flux)


@dataclass(frozen=True)
class Band:
    """One filter of a survey, with the numbers that set its image quality and noise."""

    name: str
    fwhm_arcsec: float  # median PSF FWHM
    depth_mag: float  # point-source limiting magnitude ...
    depth_sigma: float  # ... at this many sigma
    sky_mag_arcsec2: float  # dark-sky surface brightness, AB mag / arcsec^2
    fwhm_scatter: float = 0.12  # fractional spread of the per-image PSF FWHM around the median

    def sigma_psf_arcsec(self) -> float:
        return self.fwhm_arcsec * FWHM_TO_SIGMA


IMAGE_PRODUCT_KINDS = ("lupton", "legacy_asinh")


@dataclass(frozen=True)
class ImageProduct:
    """How a cutout service turns per-band fluxes (nanomaggies per native pixel) into 8-bit RGB.

    ``kind``: "lupton" (astropy.visualization.make_lupton_rgb, Lupton et al. 2004: colour-
    preserving asinh of the band mean, saturating to colour) or "legacy_asinh" (legacypipe
    sdss_rgb: asinh(Q I) / sqrt(Q) of the mean of the offset, scaled bands, each channel clipped).
    ``channels``: the band shown in R, G, B. ``band_scales``: multiplier per band (same order as
    the survey's bands) applied before the stretch. ``stretch`` / ``Q``: the asinh's linear range
    and softening (Lupton), ``minimum`` its black point (in scaled units; below it a pixel is
    black); ``Q`` and ``offset`` (legacy ``m``). ``jpeg_quality``: 0 for a lossless PNG product.
    """

    kind: str
    channels: tuple[str, str, str]
    band_scales: tuple[float, ...]
    Q: float
    stretch: float = 1.0
    offset: float = 0.0
    jpeg_quality: int = 75
    minimum: float = 0.0

    def __post_init__(self):
        if self.kind not in IMAGE_PRODUCT_KINDS:
            raise InputError(f"image product kind {self.kind!r} unknown; use one of {IMAGE_PRODUCT_KINDS}")
        if len(self.channels) != 3:
            raise InputError(f"an image product has 3 channels (R, G, B), got {self.channels}")
        if self.Q <= 0 or self.stretch <= 0 or any(s <= 0 for s in self.band_scales):
            raise InputError("image product Q, stretch and band scales must be > 0")
        if not 0 <= self.jpeg_quality <= 100:
            raise InputError(f"jpeg_quality {self.jpeg_quality} must be in 0..100")


@dataclass(frozen=True)
class Survey:
    """An imaging survey as data: name, bands, pixel scale, PSF, depth, sky, cutout service."""

    name: str
    title: str
    pixel_scale_arcsec: float
    bands: tuple[Band, ...]
    cutout_service: str  # "sdss_skyserver" | "legacy_survey" (read by data.download) | "desaccess"
    cutout_layer: str = ""  # layer name at the cutout service (Legacy Survey: "des-dr1", "ls-dr10")
    # Galaxy Zoo-like volunteer votes per galaxy in this survey's project (range drawn uniformly).
    votes_min: int = 40
    votes_max: int = 40
    # What the cutout service serves and the study's model sees (simulate/product.py); None: the
    # linear fluxes themselves (a FITS product).
    image_product: ImageProduct | None = None
    notes: str = field(default="", compare=False)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        for b in self.bands:
            if b.name == name:
                return b
        raise InputError(
            f"survey {self.name!r} has no band {name!r}; its bands are {', '.join(self.band_names)}"
        )

    # --- derived noise model (see the module docstring) -------------------------------------
    def noise_eff_pixels(self, band: str) -> float:
        """Effective number of pixels of the optimal point-source filter: 4 pi sigma_psf^2 / pix^2."""
        sig = self.band(band).sigma_psf_arcsec() / self.pixel_scale_arcsec
        return 4.0 * math.pi * sig * sig

    def sky_noise_per_pixel(self, band: str) -> float:
        """1-sigma sky noise per pixel in nanomaggies, from the quoted point-source depth."""
        b = self.band(band)
        return mag_to_flux(b.depth_mag) / (b.depth_sigma * math.sqrt(self.noise_eff_pixels(band)))

    def sky_per_pixel(self, band: str) -> float:
        """Sky level per pixel in nanomaggies, from the quoted sky surface brightness."""
        b = self.band(band)
        return mag_to_flux(b.sky_mag_arcsec2) * self.pixel_scale_arcsec**2

    def electrons_per_nanomaggy(self, band: str) -> float:
        """Effective gain x exposure: sky Poisson noise equals the depth-derived sky noise."""
        return self.sky_per_pixel(band) / self.sky_noise_per_pixel(band) ** 2


# Sources:
#  SDSS DR7: Abazajian et al. 2009 (ApJS 182, 543), Table 1: 0.396"/px; median PSF FWHM 1.4" in r;
#    Depth: 5-sigma point-source limits of York et al. 2000 (AJ 120, 1579), g 23.3, r 23.1,
#    i 22.3 in 1" seeing, brought to each band's median seeing (the noise model's n_eff grows as
#    FWHM^2, so the limit brightens by 2.5 log10(FWHM / 1")): g 22.86, r 22.73, i 22.02. They
#    agree within ~0.1-0.4 mag with the sky brightness below, the photometric zero points (a
#    20th-magnitude star gives ~2,600 / 1,900 / 1,500 DN in 53.9 s in g / r / i) and gains (3.9 /
#    4.7 / 4.9 e-/DN) of Stoughton et al. 2002. (Simulator versions 1-3 used DR7's 95%
#    completeness limits, g 22.2, r 22.2, i 21.3, as if they were 5 sigma; a point source there
#    has S/N ~8, so those images were ~1.6x too noisy.)
#    Seeing is worse in g (~1.5") and better in i (~1.3"): Stoughton et al. 2002, Fig. 3 trend.
#    Dark-sky brightness g 21.9, r 20.9, i 20.2 mag/arcsec^2: SDSS DR7 photometric-flag notes /
#    Stoughton et al. 2002, sect. 4.5.
#  DES Y1: Drlica-Wagner et al. 2018 (ApJS 235, 33), Y1 Gold: 0.263"/px; median PSF FWHM g 1.25",
#    r 1.07", i 0.97"; 10-sigma limiting magnitudes g 23.4, r 23.2, i 22.5. Sky g 22.0, r 21.1,
#    i 20.4 mag/arcsec^2: DECam dark-sky values, Abbott et al. 2018 (DES DR1, ApJS 239, 18), sect. 3.
#  DECaLS DR5: Dey et al. 2019 (AJ 157, 168): 0.262"/px, median PSF FWHM g 1.29", r 1.18",
#    z 1.11"; 5-sigma point-source depth g 24.0, r 23.4, z 22.5 (the survey has no i band: its
#    bands are g, r, z, and a g,r,i model applied to it sees z in the third channel).
#  Volunteers: GZ2 ~40 classifications per galaxy (Willett et al. 2013); GZ DECaLS 5-40
#    (Walmsley et al. 2022).
#  Image products (simulate/product.py): SDSS SkyServer JPEG = Lupton et al. 2004 (PASP 116, 133)
#    asinh, R = i, G = r, B = g; its scales are not published in nanomaggies, so Q, stretch and
#    band scales are calibrated on 1,000 real SkyServer JPEGs (benchmarks/
#    image_product_calibration.py). DES and DECaLS: the Legacy Survey viewer's composite,
#    legacypipe survey.py sdss_rgb defaults (scales g 6.0, r 3.4, i 3.0, z 2.2; m = 0.03; Q = 20).
#    JPEG quality 75 for both (Pillow's and IDL's default; the services do not state theirs).
#  DES through DES's own cutout service (``des_desaccess``): DESaccess (des-labs/des-tasks,
#    cutout/worker/bulkthumbs.py and config.default.yaml) runs astropy's make_lupton_rgb on the
#    coadd FITS cutouts (counts at zero point 30: 1,000 per nanomaggy) with rgb_minimum 1.0,
#    rgb_stretch 50, rgb_asinh (Q) 10, and saves a PNG; bands here R = i, G = r, B = g (the
#    service's own default, 'gri', puts g in red). Its sky is dark, where the Legacy viewer's is
#    grey (configs/README.md, "Training from scratch on DES images"). The same DES observations
#    (PSF, noise, volunteers) as ``des``: only the served product differs. DESaccess needs an
#    account, so morphtransfer does not download from it.
SURVEYS: dict[str, Survey] = {
    "sdss": Survey(
        name="sdss",
        title="SDSS DR7",
        pixel_scale_arcsec=0.396,
        bands=(
            Band("g", fwhm_arcsec=1.50, depth_mag=22.86, depth_sigma=5.0, sky_mag_arcsec2=21.9),
            Band("r", fwhm_arcsec=1.40, depth_mag=22.73, depth_sigma=5.0, sky_mag_arcsec2=20.9),
            Band("i", fwhm_arcsec=1.30, depth_mag=22.02, depth_sigma=5.0, sky_mag_arcsec2=20.2),
        ),
        cutout_service="sdss_skyserver",
        votes_min=40,
        votes_max=40,
        image_product=ImageProduct(
            kind="lupton", channels=("i", "r", "g"), band_scales=(0.83, 1.0, 0.67), Q=17.7,
            stretch=0.78,
        ),
    ),
    "des": Survey(
        name="des",
        title="DES Y1",
        pixel_scale_arcsec=0.263,
        bands=(
            Band("g", fwhm_arcsec=1.25, depth_mag=23.4, depth_sigma=10.0, sky_mag_arcsec2=22.0),
            Band("r", fwhm_arcsec=1.07, depth_mag=23.2, depth_sigma=10.0, sky_mag_arcsec2=21.1),
            Band("i", fwhm_arcsec=0.97, depth_mag=22.5, depth_sigma=10.0, sky_mag_arcsec2=20.4),
        ),
        cutout_service="legacy_survey",
        cutout_layer="des-dr1",
        votes_min=5,
        votes_max=40,
        image_product=ImageProduct(
            kind="legacy_asinh", channels=("i", "r", "g"), band_scales=(6.0, 3.4, 3.0), Q=20.0,
            offset=0.03,
        ),
    ),
    "decals": Survey(
        name="decals",
        title="DECaLS DR5",
        pixel_scale_arcsec=0.262,
        bands=(
            Band("g", fwhm_arcsec=1.29, depth_mag=24.0, depth_sigma=5.0, sky_mag_arcsec2=22.0),
            Band("r", fwhm_arcsec=1.18, depth_mag=23.4, depth_sigma=5.0, sky_mag_arcsec2=21.1),
            Band("z", fwhm_arcsec=1.11, depth_mag=22.5, depth_sigma=5.0, sky_mag_arcsec2=19.9),
        ),
        cutout_service="legacy_survey",
        cutout_layer="ls-dr10",
        votes_min=5,
        votes_max=40,
        image_product=ImageProduct(
            kind="legacy_asinh", channels=("z", "r", "g"), band_scales=(6.0, 3.4, 2.2), Q=20.0,
            offset=0.03,
        ),
    ),
}

# The same DES observations (bands, PSF, depth, votes) as DES's own cutout service serves them.
SURVEYS["des_desaccess"] = replace(
    SURVEYS["des"],
    name="des_desaccess",
    title="DES Y1 (DESaccess colour cutouts)",
    cutout_service="desaccess",
    cutout_layer="",
    image_product=ImageProduct(
        kind="lupton", channels=("i", "r", "g"), band_scales=(1000.0, 1000.0, 1000.0), Q=10.0,
        stretch=50.0, minimum=1.0, jpeg_quality=0,
    ),
)


def get_survey(name: str) -> Survey:
    """Look a survey up by name (case-insensitive); a clear error lists the known ones."""
    key = name.strip().lower()
    if key not in SURVEYS:
        raise InputError(f"unknown survey {name!r}; known surveys: {', '.join(sorted(SURVEYS))}")
    return SURVEYS[key]
