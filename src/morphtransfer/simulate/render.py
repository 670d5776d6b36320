"""Observe an intrinsic galaxy with a survey: GalSim profiles, the survey's PSF, pixels and noise,
then the study's preprocessing (cutout ~10 x R90, area-averaged to 69 x 69, each band / its max).

How a galaxy is drawn, and why it is fast: GalSim evaluates each component's Fourier transform
(``drawKImage``: thick inclined exponential disk, Sersic bulge or spheroid, flat Ferrers-like bar)
once per survey on the k-grid of the survey's cutout. Every band is then a linear combination of
those same component transforms (band fluxes differ: bulges redder than disks), multiplied by the
band's PSF and the pixel response, and brought back with one inverse real FFT. This is what
GalSim's own ``drawImage`` does for a convolution (draw in k-space, FFT), done once per component
instead of once per component per band. Spiral-arm knots and clumps (dozens of small Gaussians)
are summed in k-space as a single matrix product instead of a GalSim ``Sum`` of shifted objects,
which would cost one complex exponential per knot per k-point.

PSF: a Gaussian of the band's FWHM, the profile the Survey table's noise model assumes
(surveys.py), with a per-image seeing factor drawn around the median (``Band.fwhm_scatter``),
common to the bands of one image (SDSS observes g, r, i simultaneously in drift scan).

Noise: sky noise per pixel from the survey's depth plus the galaxy's own Poisson noise with the
survey's electrons per nanomaggy (``Survey.sky_noise_per_pixel``, ``electrons_per_nanomaggy``).

Served image: when the survey has an ``image_product`` (SDSS SkyServer JPEG, Legacy Survey viewer
JPEG), the noisy fluxes go through that survey's colour stretch, 8 bits and JPEG before the
study's preprocessing, exactly as real cutouts do (product.py); without one the model sees the
linear fluxes (a FITS product).

Large galaxies: a cutout of 10 x R90 can span many hundreds of DES pixels. Above
``MAX_STAMP_PIXELS`` the stamp is drawn with pixels an integer multiple ``binning`` of the survey's
pixel (sky variance binning^2 times larger): the sum of binning x binning survey pixels, so the
result has the statistics of drawing at the native scale and binning, and the 69 x 69 model input,
which is coarser still, is unchanged in kind. The k-grid stops at the binned pixel's Nyquist
frequency, so binning is allowed only as far as the sharpest PSF stays sampled there
(``max_binning``: PSF x pixel transform < 5% at Nyquist); past that the stamp grows instead.

Visibility of features (read by the volunteers): each feature's image alone (noise-free, with the
survey's PSF and pixels) is compared with the image's noise plus a contrast floor that stands for
what a human eye can distinguish on a galaxy, counted once per PSF beam:
``var_eff = sky_var + galaxy/gain + n_beam (CONTRAST_FLOOR * galaxy)^2``, and
``vis = sqrt(sum(feature^2 / var_eff))``. For arms/clumps the feature is the knots' image
high-pass filtered at half a disk scale radius in the disk plane (what survives of their
structure after projection and the PSF);
for bars it is the bar image's non-axisymmetric part ``(B - rot90(B)) / 2`` (a bar blurred
round by the PSF is no longer a bar). The thin-disk appearance is the axis ratio measured from the
second moments of the noise-free image within the isophote 2 sigma above the sky: worse seeing
makes thin disks rounder, a shallower image loses their faint outer parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import galsim
import numpy as np
import scipy.fft
from scipy import special

from morphtransfer.data.preprocess import CROP_FACTOR, IMAGE_SIZE, preprocess_cutout
from morphtransfer.errors import InputError
from morphtransfer.simulate.field import (
    BRIGHT_GALAXY_MAG,
    GAUSSIAN_SIGMA_PER_HLR,
    GALAXY,
    Field,
    render_limit,
)
from morphtransfer.simulate.population import Galaxy, flux_in_band
from morphtransfer.simulate.product import serve
from morphtransfer.surveys import FWHM_TO_SIGMA, Survey, get_survey

MODEL_SIZE = IMAGE_SIZE  # the study's input: 69 x 69 pixels per band
CUTOUT_R90 = CROP_FACTOR  # cutout side in units of R90, shared with the real-data preprocessing
MAX_STAMP_PIXELS = 161  # above this the stamp is drawn with binned pixels (see module doc)
MIN_STAMP_PIXELS = 25
# Thresholds only for GalSim's internal Sersic tables; the grid itself is set by the stamp.
GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=1e-3, kvalue_accuracy=1e-4)
# What a human can tell apart on a galaxy image, as a fraction of the local surface brightness
# per PSF beam (tuned so that label rates match the study; see volunteers.py).
CONTRAST_FLOOR = 0.10
# PSF x pixel amplitude allowed at the Nyquist frequency of a binned render pixel (the k-grid is
# cut there; see max_binning).
NYQUIST_AMPLITUDE = 0.05
# Isophote for the apparent axis ratio, in sky sigmas per survey pixel.
ISOPHOTE_SIGMA = 2.0


@dataclass(frozen=True)
class StampGeometry:
    n_pix: int  # stamp side in render pixels (odd, galaxy on the central pixel)
    pixel_scale_arcsec: float  # render pixel = survey pixel x binning
    binning: int
    cutout_arcsec: float  # side of the model-input crop (the stamp is a little larger)
    fft_size: int  # even FFT grid side (padded by the PSF's reach)


def max_binning(survey: Survey, fwhm_min_arcsec: float) -> int:
    """Largest pixel binning that still samples the sharpest PSF: the PSF x pixel transform at the
    Nyquist frequency stays below NYQUIST_AMPLITUDE, so cutting the k-grid there (no aliased
    power folded back) leaves no visible ringing."""
    sigma = fwhm_min_arcsec * FWHM_TO_SIGMA
    # amplitude at k_N = pi / P: sinc(1/2) exp(-(sigma pi / P)^2 / 2) <= NYQUIST_AMPLITUDE
    x = math.sqrt(2 * math.log(np.sinc(0.5) / NYQUIST_AMPLITUDE))
    p_max = math.pi * sigma / x
    return max(1, int(p_max / survey.pixel_scale_arcsec))


def stamp_geometry(
    survey: Survey,
    r90_arcsec: float,
    cutout_r90: float = CUTOUT_R90,
    max_pixels: int = MAX_STAMP_PIXELS,
    fwhm_arcsec: float | None = None,
    fwhm_min_arcsec: float | None = None,
) -> StampGeometry:
    """Cutout of ``cutout_r90`` x R90 on a side; pixels binned when the stamp would exceed
    ``max_pixels``, as far as the sharpest PSF (``fwhm_min_arcsec``) stays sampled."""
    if not (r90_arcsec > 0) or not math.isfinite(r90_arcsec):
        raise InputError(f"R90 = {r90_arcsec} arcsec must be a positive number")
    side = cutout_r90 * r90_arcsec
    pix = survey.pixel_scale_arcsec
    n_native = max(int(round(side / pix)), MIN_STAMP_PIXELS)
    fwhm_min = fwhm_min_arcsec or min(b.fwhm_arcsec for b in survey.bands)
    binning = min(max(1, math.ceil(n_native / max_pixels)), max_binning(survey, fwhm_min))
    scale = pix * binning
    # a pixel of margin each side: the exact (fractional) crop lies inside the stamp
    n = max(int(math.ceil(side / scale)) + 2, MIN_STAMP_PIXELS)
    n += (n + 1) % 2  # odd: the galaxy centre is a pixel centre, rot90 is exact
    fwhm = fwhm_arcsec or max(b.fwhm_arcsec for b in survey.bands)
    pad = 2 * math.ceil(3 * fwhm * FWHM_TO_SIGMA / scale)
    # Light beyond the cutout (at 5 R90 from the centre: < 3% even for n = 6) wraps around the
    # periodic FFT grid spread thin; only the PSF's reach is padded.
    m = scipy.fft.next_fast_len(n + pad, real=True)
    while m % 2:
        m = scipy.fft.next_fast_len(m + 1, real=True)
    return StampGeometry(n, scale, binning, side, m)


class KGrid:
    """The half-plane k-grid of one stamp, in numpy's rfft2 order (ky rows, kx columns)."""

    def __init__(self, geom: StampGeometry):
        self.geom = geom
        m, p = geom.fft_size, geom.pixel_scale_arcsec
        self.m = m
        self.dk = 2 * math.pi / (m * p)
        self.kx = 2 * math.pi * np.fft.rfftfreq(m, d=p)
        self.ky = 2 * math.pi * np.fft.fftfreq(m, d=p)
        self.k2 = self.ky[:, None] ** 2 + self.kx[None, :] ** 2
        # pixel response (box of the render pixel): np.sinc(x) = sin(pi x)/(pi x)
        self.pixel = np.sinc(self.ky[:, None] * p / (2 * math.pi)) * np.sinc(
            self.kx[None, :] * p / (2 * math.pi)
        )

    def draw(self, obj: galsim.GSObject) -> np.ndarray:
        """Fourier transform of a GalSim profile on this grid (kValue(0) = flux)."""
        half = self.m // 2
        im = galsim.ImageCD(galsim.BoundsI(0, half, -half, half - 1), scale=self.dk)
        obj.drawKImage(image=im, recenter=False)
        return np.fft.ifftshift(im.array, axes=0)

    def gaussian_psf(self, fwhm_arcsec: float) -> np.ndarray:
        s = fwhm_arcsec * FWHM_TO_SIGMA
        return np.exp(-0.5 * s * s * self.k2)

    def to_stamp(self, kimage: np.ndarray) -> np.ndarray:
        """Inverse FFT to pixel fluxes, cropped to the n_pix x n_pix stamp around the centre."""
        img = scipy.fft.irfft2(kimage, s=(self.m, self.m))
        n = self.geom.n_pix
        # the origin sits at pixel (0, 0); roll it to the stamp centre while cropping
        idx = (np.arange(n) - n // 2) % self.m
        return img[np.ix_(idx, idx)]


def _projection(g: Galaxy) -> np.ndarray:
    """Disk plane (major axis along x) -> sky: compress y by the projected cos i, rotate by PA."""
    c = g.projected_cos
    t = math.radians(g.position_angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return rot @ np.diag([1.0, c])


def bar_profile(g: Galaxy) -> galsim.GSObject:
    """The bar in the sky plane (before the galaxy's position angle), unit flux.

    Bars are flat along their major axis and end steeply: their light profiles are fitted with
    Ferrers functions, flat or shallow inside and truncated at the bar end (Elmegreen & Elmegreen
    1985; Gadotti 2011, MNRAS 415, 3308). Drawn as a uniform rectangle of 1.5 a x 1.5 b (a the
    semi-major axis, b = q a) whose edges are softened by a Gaussian of sigma 0.3 b: the surface
    brightness is flat to ~0.75 a and falls to zero by ~a, in the disk plane, then projected with
    the disk. A Gaussian of the same a (simulator_version 1) puts most of its light inside a / 2,
    where it reads as an elongated bulge rather than a bar.
    """
    a, b = g.bar_length_arcsec, g.bar_axis_ratio * g.bar_length_arcsec
    bar = galsim.Convolve(
        galsim.Box(width=1.5 * a, height=1.5 * b, gsparams=GSPARAMS),
        galsim.Gaussian(sigma=0.3 * b, gsparams=GSPARAMS),
    ).rotate(g.bar_angle_deg * galsim.degrees)
    return bar.transform(1.0, 0.0, 0.0, g.projected_cos)


def oval_profile(g: Galaxy) -> galsim.GSObject:
    """The oval or lens in the sky plane (before the galaxy's position angle), unit flux.

    Lenses have a shallow inner profile and a fairly sharp edge (Kormendy 1979); oval disks are
    elongated inner disks. Both are drawn as a Sersic n = 0.5 (a Gaussian: flat inside, falling
    steeply beyond ~1.5 half-light radii) flattened to its intrinsic axis ratio in the disk plane,
    turned to its angle there and projected with the disk, as the bar is.
    """
    oval = galsim.Sersic(n=0.5, half_light_radius=g.oval_hlr_arcsec, gsparams=GSPARAMS)
    oval = oval.shear(q=g.oval_axis_ratio, beta=g.oval_angle_deg * galsim.degrees)
    return oval.transform(1.0, 0.0, 0.0, g.projected_cos)


def component_kimages(g: Galaxy, grid: KGrid) -> dict[str, np.ndarray]:
    """Unit-flux Fourier transforms of the galaxy's components on the grid."""
    g.validate()
    deg = galsim.degrees
    pa = g.position_angle_deg * deg
    out: dict[str, np.ndarray] = {}
    if not g.disk:
        obj = galsim.Sersic(n=g.sersic_n, half_light_radius=g.sersic_hlr_arcsec, gsparams=GSPARAMS)
        out["smooth"] = grid.draw(obj.shear(q=g.sersic_q, beta=pa))
        return out
    disk = galsim.InclinedExponential(
        inclination=g.inclination_deg * deg,
        half_light_radius=g.disk_hlr_arcsec,
        scale_h_over_r=g.disk_h_over_r,
        gsparams=GSPARAMS,
    )
    out["disk"] = grid.draw(disk.rotate(pa))
    if g.bulge_to_total > 0:
        bulge = galsim.Sersic(
            n=g.sersic_n, half_light_radius=g.sersic_hlr_arcsec, gsparams=GSPARAMS
        ).shear(q=min(g.sersic_q, 1.0), beta=pa)
        out["bulge"] = grid.draw(bulge)
    if g.bar and g.bar_strength > 0:
        out["bar"] = grid.draw(bar_profile(g).rotate(pa).withFlux(1.0))
    if g.oval_strength > 0:
        out["oval"] = grid.draw(oval_profile(g).rotate(pa).withFlux(1.0))
    if len(g.knot_weights):
        out["knots"] = knots_kimage(g, grid)
    return out


def knots_kimage(g: Galaxy, grid: KGrid) -> np.ndarray:
    """Sum of Gaussian knots (in the disk plane, projected): env(k) * sum_j w_j exp(-i k.x_j).

    The phase sum factorises per axis, exp(-i kx x) exp(-i ky y), so it is one matrix product."""
    a = _projection(g) * g.disk_scale_arcsec
    xy = g.knot_xy @ a.T  # sky positions, arcsec
    s = g.knot_sigma  # in scale radii; the Gaussian's covariance is s^2 A A^T
    cov = (s * s) * (a @ a.T)
    kx, ky = grid.kx, grid.ky
    env = np.exp(
        -0.5
        * (
            cov[0, 0] * kx[None, :] ** 2
            + 2 * cov[0, 1] * ky[:, None] * kx[None, :]
            + cov[1, 1] * ky[:, None] ** 2
        )
    )
    ex = np.exp(-1j * np.outer(xy[:, 0], kx))  # (J, nkx)
    ey = np.exp(-1j * np.outer(xy[:, 1], ky))  # (J, nky)
    phase = (ey.T * g.knot_weights[None, :]) @ ex
    return env * phase


def render_field(fld: Field, survey: Survey, geom: StampGeometry, psf_fwhm: dict[str, float]) -> np.ndarray:
    """Noise-free stamps (bands, n, n) of the field sources this survey renders (brighter than
    field.render_limit), in the stamp's pixels, with the same Gaussian PSF and pixel response as
    the galaxy.

    Stars, and field galaxies fainter than BRIGHT_GALAXY_MAG (half-light radii of ~0.3-1", the
    PSF's size), are Gaussians of the PSF's width combined with a Gaussian of the galaxy's
    half-light radius, integrated exactly over each pixel (a product of two error-function
    differences), all sources at once. Brighter galaxies
    are GalSim profiles (a sheared Exponential convolved with the middle band's PSF, the drawing
    scaled to each band's flux) drawn into a sub-image around each one, GalSim's way of building
    a scene of many objects (``drawImage(center=...)`` on a bounded image, which also integrates
    over the pixel). Both cost per source, not per pixel of the stamp: a 200" frame holds
    hundreds of sources."""
    n, scale = geom.n_pix, geom.pixel_scale_arcsec
    out = np.zeros((len(psf_fwhm), n, n))
    fld = fld.brighter_than(render_limit(survey))
    if len(fld) == 0:
        return out
    fld.validate()
    c = n // 2  # the galaxy's pixel; columns are +x, rows +y (as to_stamp)
    xp, yp = c + fld.x_arcsec / scale, c + fld.y_arcsec / scale
    bright = (fld.kind == GALAXY) & (fld.mag_r < BRIGHT_GALAXY_MAG)
    sig_gal = np.where(fld.kind == GALAXY, GAUSSIAN_SIGMA_PER_HLR * fld.hlr_arcsec, 0.0)
    small = ~bright
    bands = list(psf_fwhm)
    flux = {b: fld.band_fluxes(b) for b in bands}
    for ib, (band, fwhm) in enumerate(psf_fwhm.items()):
        if small.any():
            sig = np.hypot(fwhm * FWHM_TO_SIGMA, sig_gal[small]) / scale  # pixels
            _add_gaussians(out[ib], xp[small], yp[small], sig, flux[band][small])
    if bright.any():
        # one GalSim drawing per galaxy with the middle band's PSF, scaled to each band's flux
        # (the bands' PSFs differ by ~15% in width, a detail on a neighbour)
        mid = bands[len(bands) // 2]
        fwhm = psf_fwhm[mid]
        psf = galsim.Gaussian(fwhm=fwhm, gsparams=GSPARAMS)
        ratio = np.stack([flux[b] for b in bands]) / flux[mid]
        img = galsim.ImageD(n, n, xmin=0, ymin=0, scale=scale)
        for j in np.flatnonzero(bright):
            gal = galsim.Exponential(half_light_radius=float(fld.hlr_arcsec[j]),
                                     flux=float(flux[mid][j]), gsparams=GSPARAMS)
            gal = gal.shear(q=float(fld.axis_ratio[j]), beta=float(fld.angle_deg[j]) * galsim.degrees)
            reach = int(math.ceil((6 * fld.hlr_arcsec[j] + 4 * fwhm * FWHM_TO_SIGMA) / scale))
            ix, iy = int(round(xp[j])), int(round(yp[j]))
            bounds = galsim.BoundsI(ix - reach, ix + reach, iy - reach, iy + reach) & img.bounds
            if not bounds.isDefined():
                continue
            sub = galsim.Convolve(gal, psf).drawImage(
                image=img[bounds].copy(), center=galsim.PositionD(xp[j], yp[j])).array
            ys, xs = bounds.ymin, bounds.xmin
            out[:, ys:ys + sub.shape[0], xs:xs + sub.shape[1]] += ratio[:, j, None, None] * sub
    return out


def _add_gaussians(stamp: np.ndarray, xp, yp, sig, flux, n_sigma: float = 5.0) -> None:
    """Add round Gaussians (pixel centres xp, yp; widths sig, in pixels), each integrated over the
    pixels of its +-n_sigma window, to ``stamp`` in place. Sources are grouped by window size
    (powers of two), so a few large ones do not widen every window."""
    size = np.exp2(np.ceil(np.log2(np.maximum(n_sigma * sig, 1.0))))
    for w in np.unique(size):
        sel = size == w
        _add_gaussian_group(stamp, xp[sel], yp[sel], sig[sel], flux[sel], int(w))


def _add_gaussian_group(stamp: np.ndarray, xp, yp, sig, flux, w: int) -> None:
    n = stamp.shape[0]
    off = np.arange(-w, w + 1)
    cols = np.rint(xp).astype(int)[:, None] + off[None, :]  # (J, 2w + 1)
    rows = np.rint(yp).astype(int)[:, None] + off[None, :]

    def profile(idx, centre):
        s, d = sig[:, None], idx - centre[:, None]
        return special.ndtr((d + 0.5) / s) - special.ndtr((d - 0.5) / s)

    gx, gy = profile(cols, xp), profile(rows, yp)
    gx[(cols < 0) | (cols >= n)] = 0.0
    gy[(rows < 0) | (rows >= n)] = 0.0
    keep = (gx.sum(1) > 0) & (gy.sum(1) > 0)
    if not keep.any():
        return
    patches = flux[keep, None, None] * gy[keep, :, None] * gx[keep, None, :]
    flat = np.clip(rows[keep], 0, n - 1)[:, :, None] * n + np.clip(cols[keep], 0, n - 1)[:, None, :]
    # overlapping windows add up: a weighted histogram over the stamp's flat pixel index
    stamp += np.bincount(flat.ravel(), weights=patches.ravel(), minlength=n * n).reshape(n, n)


def band_flux(g: Galaxy, component: str, flux_r: float, band: str) -> float:
    """Component flux in ``band`` from its r flux and colours (g-r, r-i, r-z)."""
    return float(flux_in_band(flux_r, g.colour(component), band))


@dataclass
class Observation:
    """One galaxy seen by one survey."""

    survey: str
    images: np.ndarray  # (bands, 69, 69) float32 model input
    psf_fwhm_arcsec: dict[str, float]
    geometry: StampGeometry
    visibility: dict[str, float]
    snr_r: float
    stamps: np.ndarray | None = None  # (bands, n, n) noisy pixel fluxes, nanomaggies
    models: np.ndarray | None = None  # noise-free, the galaxy alone
    scene: np.ndarray | None = None  # noise-free, the galaxy and its field (= models without one)
    served: np.ndarray | None = None  # (bands, n, n) the served 8-bit product, when the survey has one

    def catalog_row(self) -> dict:
        row = {f"psf_fwhm_{b}_arcsec": v for b, v in self.psf_fwhm_arcsec.items()}
        row.update(
            {
                "pixel_scale_arcsec": self.geometry.pixel_scale_arcsec / self.geometry.binning,
                "render_binning": self.geometry.binning,
                "cutout_arcsec": self.geometry.cutout_arcsec,
                "snr_r": self.snr_r,
            }
        )
        row.update(self.visibility)
        return row


def draw_psf_fwhm(survey: Survey, rng: np.random.Generator) -> dict[str, float]:
    """Per-image PSF FWHM: the band medians times one lognormal seeing factor for the image."""
    scatter = float(np.mean([b.fwhm_scatter for b in survey.bands]))
    factor = math.exp(rng.normal(0.0, scatter))
    return {b.name: b.fwhm_arcsec * factor for b in survey.bands}


def render_kimages(
    kimages: dict[str, np.ndarray],
    fluxes: dict[str, dict[str, float]],
    grid: KGrid,
    psf_fwhm: dict[str, float],
) -> np.ndarray:
    """Noise-free stamps (bands, n, n): sum_c flux_cb K_c x PSF_b x pixel, inverse FFT."""
    out = []
    for band, fwhm in psf_fwhm.items():
        k = sum(fluxes[band][c] * kimages[c] for c in kimages)
        out.append(grid.to_stamp(k * grid.gaussian_psf(fwhm) * grid.pixel))
    return np.stack(out)


def add_noise(
    models: np.ndarray, survey: Survey, bands, binning: int, rng: np.random.Generator
) -> np.ndarray:
    """Sky noise (depth) + galaxy Poisson noise (electrons per nanomaggy), Gaussian approximation
    (counts per pixel are in the hundreds or more)."""
    noisy = np.empty_like(models)
    for j, b in enumerate(bands):
        sky_var = (binning * survey.sky_noise_per_pixel(b)) ** 2
        var = sky_var + np.clip(models[j], 0, None) / survey.electrons_per_nanomaggy(b)
        noise = rng.standard_normal(models[j].shape, dtype=np.float32)
        noisy[j] = models[j] + noise * np.sqrt(var)
    return noisy


def serve_survey(
    models: np.ndarray, survey: Survey, bands, binning: int, rng: np.random.Generator,
    product=None,
) -> np.ndarray:
    """What the survey's cutout service serves for noise-free stamps (product.serve with the
    survey's per-native-pixel sky noise and gain); ``product`` overrides ``survey.image_product``."""
    return serve(
        models, bands, product or survey.image_product, binning,
        np.array([survey.sky_noise_per_pixel(b) for b in bands]),
        np.array([survey.electrons_per_nanomaggy(b) for b in bands]), rng,
    )


def _axis_ratio_and_angle(img: np.ndarray, threshold: float) -> tuple[float, float]:
    """Axis ratio and major-axis angle (deg, from +x, counter-clockwise) from the second moments
    of the pixels above ``threshold``."""
    mask = img > threshold
    if mask.sum() < 3:
        return 1.0, 0.0
    w = np.where(mask, img, 0.0)
    n = img.shape[0]
    y, x = np.mgrid[0:n, 0:n] - n // 2
    f = w.sum()
    cx, cy = (w * x).sum() / f, (w * y).sum() / f
    xx = (w * (x - cx) ** 2).sum() / f
    yy = (w * (y - cy) ** 2).sum() / f
    xy = (w * (x - cx) * (y - cy)).sum() / f
    tr, det = xx + yy, xx * yy - xy * xy
    disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
    l1, l2 = tr / 2 + disc, max(tr / 2 - disc, 0.0)
    q = math.sqrt(l2 / l1) if l1 > 0 else 1.0
    angle = 0.5 * math.degrees(math.atan2(2 * xy, xx - yy)) % 180.0
    return q, angle


def measure_shape(img: np.ndarray, threshold: float = 0.0) -> tuple[float, float]:
    """Public wrapper: (axis ratio, position angle in deg) of an image's light above threshold."""
    return _axis_ratio_and_angle(np.asarray(img, dtype=np.float64), threshold)


def observe(
    g: Galaxy,
    survey: Survey | str,
    rng: np.random.Generator,
    keep_stamps: bool = False,
    model_size: int = MODEL_SIZE,
    max_pixels: int = MAX_STAMP_PIXELS,
    contrast_floor: float = CONTRAST_FLOOR,
    cutout_r90: float = CUTOUT_R90,
    field: Field | None = None,
) -> Observation:
    """Render galaxy ``g`` in ``survey``: (bands, model_size, model_size) model input plus the
    per-survey visibility of its features. With ``field`` (field.py) its stars and galaxies are
    in the image too, through the same PSF, noise and served product; ``models`` and the
    visibilities stay the galaxy's alone."""
    survey = get_survey(survey) if isinstance(survey, str) else survey
    bands = survey.band_names
    psf_fwhm = draw_psf_fwhm(survey, rng)
    geom = stamp_geometry(survey, g.r90_arcsec, cutout_r90=cutout_r90, max_pixels=max_pixels,
                          fwhm_arcsec=max(psf_fwhm.values()), fwhm_min_arcsec=min(psf_fwhm.values()))
    grid = KGrid(geom)
    kims = component_kimages(g, grid)
    comp_r = g.component_fluxes_r()
    fluxes = {b: {c: band_flux(g, c, comp_r[c], b) for c in kims} for b in bands}
    models = render_kimages(kims, fluxes, grid, psf_fwhm)
    scene = models if field is None else models + render_field(field, survey, geom, psf_fwhm)
    noisy = served = None
    if survey.image_product is not None:
        # what the survey's cutout service serves: noise per native pixel, its colour stretch,
        # 8 bits, JPEG (product.py)
        served = serve_survey(scene, survey, bands, geom.binning, rng)
        source = served
    else:
        noisy = add_noise(scene, survey, bands, geom.binning, rng)
        source = noisy
    # the study's preprocessing, shared with real data: crop 10 x R90 (fractional edges),
    # area-average to 69 x 69, each band / its maximum
    images = preprocess_cutout(source, geom.pixel_scale_arcsec, g.r90_arcsec, size=model_size,
                               crop_factor=cutout_r90)
    if keep_stamps and noisy is None:
        noisy = add_noise(scene, survey, bands, geom.binning, rng)

    # --- visibility, measured in the band nearest r (the galaxy alone) ------------------------
    jr = bands.index("r") if "r" in bands else len(bands) // 2
    br = bands[jr]
    gal = models[jr]
    sky_sigma = geom.binning * survey.sky_noise_per_pixel(br)
    gain = survey.electrons_per_nanomaggy(br)
    noise_var = sky_sigma**2 + np.clip(gal, 0, None) / gain
    n_beam = max(survey.noise_eff_pixels(br) / geom.binning**2, 1.0)
    var_eff = noise_var + n_beam * (contrast_floor * np.clip(gal, 0, None)) ** 2
    tf_r = grid.gaussian_psf(psf_fwhm[br]) * grid.pixel
    vis_arms = vis_bar = 0.0
    if "knots" in kims:
        # high-pass at half a scale radius *in the disk plane*: |A^T k| is the disk-plane
        # frequency, so a projected (inclined) smooth arm envelope is removed too, and arms
        # foreshortened below the PSF lose their visibility
        a_proj = _projection(g)
        kx, ky = grid.kx[None, :], grid.ky[:, None]
        k2_disk = (a_proj[0, 0] * kx + a_proj[1, 0] * ky) ** 2 + (
            a_proj[0, 1] * kx + a_proj[1, 1] * ky
        ) ** 2
        s = 0.5 * g.disk_scale_arcsec
        high_pass = 1.0 - np.exp(-0.5 * s * s * k2_disk)
        a = grid.to_stamp(fluxes[br]["knots"] * kims["knots"] * tf_r * high_pass)
        vis_arms = float(np.sqrt(np.sum(a * a / var_eff)))
    if "bar" in kims:
        b = grid.to_stamp(fluxes[br]["bar"] * kims["bar"] * tf_r)
        f = 0.5 * (b - np.rot90(b))
        vis_bar = float(np.sqrt(np.sum(f * f / var_eff)))
    q_obs, _ = _axis_ratio_and_angle(gal, ISOPHOTE_SIGMA * sky_sigma)
    snr_r = float(np.sqrt(np.sum(gal * gal / noise_var)))
    return Observation(
        survey=survey.name,
        images=images,
        psf_fwhm_arcsec=psf_fwhm,
        geometry=geom,
        visibility={"vis_arms": vis_arms, "vis_bar": vis_bar, "vis_axis_ratio": q_obs},
        snr_r=snr_r,
        stamps=noisy.astype(np.float32) if keep_stamps else None,
        models=models.astype(np.float32) if keep_stamps else None,  # the galaxy alone
        scene=scene.astype(np.float32) if keep_stamps else None,
        served=served if keep_stamps else None,
    )


def render_point_source(
    survey: Survey | str,
    flux: float = 1000.0,
    n_pix: int = 51,
    fwhm_arcsec: dict[str, float] | None = None,
    offset_arcsec: tuple[float, float] = (0.0, 0.0),
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, StampGeometry]:
    """Stamps (bands, n, n) of a point source at the survey's native pixel scale, noise-free
    unless ``rng`` is given. For checking the PSF and pixel scale against the Survey table."""
    survey = get_survey(survey) if isinstance(survey, str) else survey
    if not (flux > 0):
        raise InputError(f"point-source flux {flux} must be > 0")
    n_pix += (n_pix + 1) % 2
    fwhm = fwhm_arcsec or {b.name: b.fwhm_arcsec for b in survey.bands}
    p = survey.pixel_scale_arcsec
    m = scipy.fft.next_fast_len(2 * n_pix, real=True)
    m += m % 2
    geom = StampGeometry(n_pix, p, 1, n_pix * p, m)
    grid = KGrid(geom)
    k = grid.draw(galsim.DeltaFunction(flux=flux).shift(*offset_arcsec))
    models = render_kimages({"ps": k}, {b: {"ps": 1.0} for b in fwhm}, grid, fwhm)
    if rng is not None:
        models = add_noise(models, survey, list(fwhm), 1, rng)
    return models, geom
