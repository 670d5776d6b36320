"""The sky around a galaxy: field stars and galaxies in its cutout (simulator version 7).

A real cutout of 10 x R90 holds more than its galaxy. In 1,000 SkyServer JPEGs of the study's
sample, 95.9% of the 69 x 69 model inputs show at least one other source in the r band, 4.4 on
average, ellipticals alike (benchmarks/field_sources.py); the simulator up to version 6 drew one
galaxy per cutout (3.4% of simulated frames had any other "source": noise and detached knots). A
network trained on the real images must learn to ignore neighbours, stars and companions, and
one trained from scratch on a few hundred images has fewer examples to learn that from.

What is drawn, per galaxy and the same for every survey (positions are sky offsets from the
galaxy's centre in arcsec, +x along image columns, as population.py):

- field stars, from high-latitude star counts: dN/dm = 10^(STAR_LOG_N20 + STAR_SLOPE (r - 20))
  per deg^2 per mag for r > 17, steeper (STAR_SLOPE_BRIGHT) brighter (Bahcall & Soneira 1980,
  ApJS 44, 73; the SDSS counts of Juric et al. 2008, ApJ 673, 864 at |b| > 30 deg: some 2,000-4,000
  stars per deg^2 to r = 22), times a per-field factor of 10^N(0, STAR_DENSITY_SCATTER_DEX)
  for the range of galactic latitudes; colours along the stellar locus (halo turn-off F/G stars
  g - r ~ 0.4 at faint magnitudes, disk K/M dwarfs redder; Covey et al. 2007, AJ 134, 2398);
- field galaxies, from the galaxy counts: dN/dm = 10^(GAL_LOG_N20 + GAL_SLOPE (r - 20)) for
  r < 22 (Yasuda et al. 2001, AJ 122, 1104: slope ~0.45 for 18 < r < 21, about 120 per deg^2 to
  r = 17.77), flattening to GAL_SLOPE_FAINT beyond (Metcalfe et al. 2001, MNRAS 323, 795), with
  exponential profiles whose half-light radius falls with magnitude (median FIELD_HLR20 at r = 20,
  -0.15 dex per mag, 0.2 dex scatter), random shapes and broad colours;
- companions: galaxies cluster, so a bright galaxy has more neighbours than a random point of
  sky. The excess surface density of field galaxies around it is n(m) w(theta) with the angular
  cross-correlation w = W_1ARCMIN (theta / 1 arcmin)^-0.8 (the power law of galaxy clustering,
  Connolly et al. 2002, ApJ 579, 42), drawn as extra galaxies at radii from that profile;
  W_1ARCMIN = 0.10 is the one number set by the real frames (field_sources.py: 95.0% of
  simulated SDSS frames hold another source, 4.35 on average; real SkyServer 95.9%, 4.36).

Sources are drawn down to FIELD_MAG_MAX, DES's 5 sigma point-source depth. A survey renders
those brighter than its own r-band 5 sigma point-source depth + RENDER_DEPTH_MARGIN mag
(``render_limit``): fainter ones are below its noise one by one, and together (under 0.1% of the
sky's surface brightness) below anything the model input shows.

Rendering (render.render_field): in the galaxy's stamp, with the same PSF and pixels, then
through the same noise and served product. Stars, and field galaxies fainter than
BRIGHT_GALAXY_MAG (about the PSF's size), are pixel-integrated Gaussians of the PSF's width
combined with a Gaussian of the galaxy's half-light radius; brighter galaxies are sheared GalSim Exponentials
convolved with the PSF, each drawn into a sub-image around it. The cost goes with the number of
sources, not with the stamp's pixels (a 200" frame holds hundreds). The volunteers' visibilities
are measured on the galaxy alone: Galaxy Zoo volunteers classify the central galaxy, and the
labels of version 6 are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from morphtransfer.data.preprocess import CROP_FACTOR
from morphtransfer.errors import InputError
from morphtransfer.simulate.population import flux_in_band, galaxy_rng
from morphtransfer.surveys import Survey, mag_to_flux

FIELD_STREAM = 101  # the field's own random stream: every version-6 parameter of a galaxy is kept

FIELD_MAG_MIN, FIELD_MAG_MAX = 13.0, 24.0
MAG_STEP = 0.05  # magnitude grid of the Poisson draw
# stars (high galactic latitude)
STAR_LOG_N20, STAR_SLOPE, STAR_SLOPE_BRIGHT, STAR_BREAK_MAG = 2.78, 0.12, 0.35, 17.0
STAR_DENSITY_SCATTER_DEX = 0.10
# galaxies
GAL_LOG_N20, GAL_SLOPE, GAL_SLOPE_FAINT, GAL_BREAK_MAG = 3.10, 0.45, 0.30, 22.0
GAL_DENSITY_SCATTER_DEX = 0.10  # cosmic variance on ~1 arcmin scales, beyond the companions
FIELD_HLR20, FIELD_HLR_SLOPE, FIELD_HLR_SCATTER_DEX = 1.2, -0.15, 0.20
FIELD_HLR_MIN = 0.1
# companions: w(theta) = W_1ARCMIN (theta / 1')^-0.8 over the frame, from COMPANION_R_MIN outwards
W_1ARCMIN = 0.10
CLUSTERING_SLOPE = 0.8
COMPANION_R_MIN_ARCSEC = 2.0
# rendering
RENDER_DEPTH_MARGIN = 0.0
BRIGHT_GALAXY_MAG = 20.5
# faint field galaxies are drawn as Gaussians of their exponential's half-light radius (a Gaussian's
# is 1.1774 sigma): after the PSF their peak and half-light radius are within ~10% of the
# exponential's for h <= 1" (tests), where matching the second moment would lose 20-30% of the peak
GAUSSIAN_SIGMA_PER_HLR = 1.0 / math.sqrt(2.0 * math.log(2.0))
STAR, GALAXY = 0, 1
FIELD_MARGIN_ARCSEC = 2.0  # drawn this far past the cutout's edge: their light reaches inside


@dataclass(frozen=True)
class Field:
    """Sources around one galaxy, the same for every survey."""

    x_arcsec: np.ndarray
    y_arcsec: np.ndarray
    mag_r: np.ndarray
    kind: np.ndarray  # STAR or GALAXY
    colours: np.ndarray  # (N, 3): g - r, r - i, r - z
    hlr_arcsec: np.ndarray  # 0 for stars
    axis_ratio: np.ndarray
    angle_deg: np.ndarray
    half_side_arcsec: float

    def __len__(self) -> int:
        return len(self.mag_r)

    def validate(self) -> None:
        n = len(self.mag_r)
        for name in ("x_arcsec", "y_arcsec", "kind", "hlr_arcsec", "axis_ratio", "angle_deg"):
            if len(getattr(self, name)) != n:
                raise InputError(f"field: {name} has {len(getattr(self, name))} entries, not {n}")
        if self.colours.shape != (n, 3):
            raise InputError(f"field: colours must be (N, 3), not {self.colours.shape}")
        if n and not np.isfinite(self.mag_r).all():
            raise InputError("field: every source needs a finite r magnitude")
        gal = self.kind == GALAXY
        if (self.hlr_arcsec[gal] <= 0).any() or not ((self.axis_ratio > 0) & (self.axis_ratio <= 1)).all():
            raise InputError("field: galaxies need half-light radius > 0 and axis ratio in (0, 1]")

    def band_fluxes(self, band: str) -> np.ndarray:
        """Fluxes in nanomaggies in ``band`` (g, r, i or z) from r and the colours."""
        return flux_in_band(mag_to_flux(self.mag_r), self.colours, band)

    def brighter_than(self, mag: float) -> "Field":
        return self._select(self.mag_r < mag)

    def _select(self, keep: np.ndarray) -> "Field":
        return Field(self.x_arcsec[keep], self.y_arcsec[keep], self.mag_r[keep], self.kind[keep],
                     self.colours[keep], self.hlr_arcsec[keep], self.axis_ratio[keep],
                     self.angle_deg[keep], self.half_side_arcsec)

    def summary_row(self) -> dict:
        """Catalogue columns (the same for every survey): sources in the cutout brighter than
        r = 22 and the brightest one's magnitude."""
        inside = (np.abs(self.x_arcsec) < self.half_side_arcsec) & (np.abs(self.y_arcsec) < self.half_side_arcsec)
        m = self.mag_r[inside]
        return {
            "field_n_sources_r22": int((m < 22).sum()),
            "field_n_stars_r22": int(((m < 22) & (self.kind[inside] == STAR)).sum()),
            "field_brightest_mag_r": float(m.min()) if len(m) else float("nan"),
        }


def star_counts(mag: np.ndarray) -> np.ndarray:
    """dN/dm of stars per deg^2 per mag at high galactic latitude."""
    mag = np.asarray(mag, dtype=float)
    faint = STAR_LOG_N20 + STAR_SLOPE * (mag - 20)
    at_break = STAR_LOG_N20 + STAR_SLOPE * (STAR_BREAK_MAG - 20)
    bright = at_break + STAR_SLOPE_BRIGHT * (mag - STAR_BREAK_MAG)
    return 10 ** np.where(mag > STAR_BREAK_MAG, faint, bright)


def galaxy_counts(mag: np.ndarray) -> np.ndarray:
    """dN/dm of field galaxies per deg^2 per mag (r band)."""
    mag = np.asarray(mag, dtype=float)
    bright = GAL_LOG_N20 + GAL_SLOPE * (mag - 20)
    at_break = GAL_LOG_N20 + GAL_SLOPE * (GAL_BREAK_MAG - 20)
    faint = at_break + GAL_SLOPE_FAINT * (mag - GAL_BREAK_MAG)
    return 10 ** np.where(mag < GAL_BREAK_MAG, bright, faint)


def _poisson_mags(rng, counts_per_deg2, area_deg2: float) -> np.ndarray:
    edges = np.arange(FIELD_MAG_MIN, FIELD_MAG_MAX + 1e-9, MAG_STEP)
    mid = 0.5 * (edges[1:] + edges[:-1])
    n = rng.poisson(counts_per_deg2(mid) * MAG_STEP * area_deg2)
    lo = np.repeat(edges[:-1], n)
    return lo + rng.uniform(0, MAG_STEP, len(lo))


def _star_colours(rng, n: int) -> np.ndarray:
    """(g - r, r - i, r - z) along the stellar locus (Covey et al. 2007): 60% halo turn-off F/G
    stars near g - r = 0.4, the rest disk G-M dwarfs up to g - r = 1.5, whose r - i rises
    steeply past g - r ~ 1.3."""
    gr = np.where(rng.uniform(size=n) < 0.6, rng.normal(0.4, 0.08, n), rng.uniform(0.5, 1.5, n))
    gr = np.clip(gr, 0.15, 1.6)
    ri = np.where(gr < 1.3, 0.37 * gr - 0.03, 0.45 + 3.0 * (gr - 1.3))
    ri = ri + rng.normal(0, 0.03, n)
    return np.stack([gr, ri, 1.7 * ri], axis=1)


def _galaxy_colours(rng, n: int) -> np.ndarray:
    """Observed colours of field galaxies at z ~ 0.1-1: broad, g - r 0.3-1.9."""
    gr = np.clip(rng.normal(0.9, 0.35, n), 0.3, 1.9)
    ri = np.clip(0.15 + 0.35 * gr + rng.normal(0, 0.1, n), 0.0, 1.3)
    return np.stack([gr, ri, 1.8 * ri], axis=1)


def _companion_radii(rng, n: int, r_min: float, r_max: float) -> np.ndarray:
    """Radii with surface density proportional to r^-CLUSTERING_SLOPE (pdf ~ r^(1 - slope))."""
    p = 2.0 - CLUSTERING_SLOPE
    u = rng.uniform(size=n)
    return (r_min**p + u * (r_max**p - r_min**p)) ** (1.0 / p)


def companion_mean(half_side_arcsec: float) -> float:
    """Expected companions per deg^2-normalised count: integral of w(theta) over the frame, in
    deg^2 (the square frame approximated by the disk of the same area)."""
    r_max = half_side_arcsec * 2 / math.sqrt(math.pi)
    r0 = 60.0
    p = 2.0 - CLUSTERING_SLOPE
    if r_max <= COMPANION_R_MIN_ARCSEC:
        return 0.0
    integral = 2 * math.pi * W_1ARCMIN * r0**CLUSTERING_SLOPE * (r_max**p - COMPANION_R_MIN_ARCSEC**p) / p
    return integral / 3600.0**2


def draw_field(rng: np.random.Generator, half_side_arcsec: float) -> Field:
    """Field stars, galaxies and companions in a square of +-half_side_arcsec around a galaxy."""
    if not (half_side_arcsec > 0) or not math.isfinite(half_side_arcsec):
        raise InputError(f"field half side {half_side_arcsec} arcsec must be a positive number")
    area = (2 * half_side_arcsec / 3600.0) ** 2
    star_factor = 10 ** rng.normal(0, STAR_DENSITY_SCATTER_DEX)
    gal_factor = 10 ** rng.normal(0, GAL_DENSITY_SCATTER_DEX)
    m_star = _poisson_mags(rng, star_counts, area * star_factor)
    m_gal = _poisson_mags(rng, galaxy_counts, area * gal_factor)
    m_comp = _poisson_mags(rng, galaxy_counts, companion_mean(half_side_arcsec) * gal_factor)
    h = half_side_arcsec
    xs, ys = rng.uniform(-h, h, len(m_star)), rng.uniform(-h, h, len(m_star))
    xg, yg = rng.uniform(-h, h, len(m_gal)), rng.uniform(-h, h, len(m_gal))
    # companions: radii from the clustering profile, inside the square (the disk of the square's
    # area; those past the square's edge fall outside the frame and are dropped)
    rc = _companion_radii(rng, len(m_comp), COMPANION_R_MIN_ARCSEC, h * 2 / math.sqrt(math.pi))
    tc = rng.uniform(0, 2 * math.pi, len(m_comp))
    xc, yc = rc * np.cos(tc), rc * np.sin(tc)
    inside = (np.abs(xc) < h) & (np.abs(yc) < h)
    m_gal = np.concatenate([m_gal, m_comp[inside]])
    xg, yg = np.concatenate([xg, xc[inside]]), np.concatenate([yg, yc[inside]])
    ng, ns = len(m_gal), len(m_star)
    hlr = 10 ** (math.log10(FIELD_HLR20) + FIELD_HLR_SLOPE * (m_gal - 20)
                 + rng.normal(0, FIELD_HLR_SCATTER_DEX, ng))
    q = rng.uniform(0.2, 1.0, ng)
    ang = rng.uniform(0, 180, ng)
    cols = np.concatenate([_star_colours(rng, ns), _galaxy_colours(rng, ng)]) if ns + ng else np.zeros((0, 3))
    return Field(
        x_arcsec=np.concatenate([xs, xg]),
        y_arcsec=np.concatenate([ys, yg]),
        mag_r=np.concatenate([m_star, m_gal]),
        kind=np.concatenate([np.full(ns, STAR), np.full(ng, GALAXY)]).astype(np.int8),
        colours=cols.reshape(-1, 3),
        hlr_arcsec=np.concatenate([np.zeros(ns), np.maximum(hlr, FIELD_HLR_MIN)]),
        axis_ratio=np.concatenate([np.ones(ns), q]),
        angle_deg=np.concatenate([np.zeros(ns), ang]),
        half_side_arcsec=float(h),
    )


def render_limit(survey: Survey) -> float:
    """Faintest field magnitude a survey renders: its r (or middle) band's 5 sigma point-source
    depth + RENDER_DEPTH_MARGIN; fainter sources are below its noise in the model input."""
    names = survey.band_names
    b = survey.bands[names.index("r") if "r" in names else len(names) // 2]
    depth5 = b.depth_mag + 2.5 * math.log10(b.depth_sigma / 5.0)
    return depth5 + RENDER_DEPTH_MARGIN


def galaxy_field(seed: int, index: int, r90_arcsec: float, cutout_r90: float = CROP_FACTOR) -> Field:
    """The field of galaxy ``index`` of population ``seed``: a function of (seed, index) only,
    from the galaxy's own FIELD_STREAM, over its cutout (``cutout_r90`` x R90) and a margin."""
    half = 0.5 * cutout_r90 * r90_arcsec + FIELD_MARGIN_ARCSEC
    return draw_field(galaxy_rng(seed, index, FIELD_STREAM), half)
