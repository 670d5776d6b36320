"""The intrinsic galaxy population: what a galaxy *is*, independent of any survey.

Galaxies are drawn one by one from a random generator seeded by (seed, galaxy index), never by
process order, so any galaxy can be re-drawn alone (resume, parallel workers, tests) and the same
seed always gives the same population.

Two families, as the study's SDSS main sample (Dominguez Sanchez et al. 2018/2019):

- smooth galaxies: one Sersic profile (n 2.5-6), axis ratio 0.5-1, with a minority of elongated
  "cigars" (0.3-0.5) that confuse the edge-on question, red colours;
- disk galaxies: a thick exponential disk (inclination uniform in cos i), a Sersic bulge
  (B/T 0-0.6, redder than the disk), spiral arms made of knots along logarithmic spirals (strength
  and pitch angle drawn per galaxy), star-forming clumps, in a fraction of disks a bar (length
  and strength drawn from a distribution), and in a fraction of disks, barred or not, an inner
  oval or lens (a mildly elongated, flat-profiled component, simulator version 6).

Angles: ``position_angle_deg`` is the major axis measured counter-clockwise from the image +x
axis (columns), with +y the direction of increasing row (images shown with origin="lower").
Fluxes in nanomaggies (see surveys.py); sizes in arcsec.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy import special

from morphtransfer.errors import InputError
from morphtransfer.surveys import mag_to_flux

# --- selection: the Galaxy Zoo 2 sample the study trained and tested on -------------------------
# The SDSS main galaxy sample reaches r = 17.77 (Strauss et al. 2002, AJ 124, 1810), but GZ2, whose
# labels and images the study used (Dominguez Sanchez et al. 2018, 2019), kept its brighter, larger
# part: Petrosian r < 17.0 and petroR90_r > 3 arcsec (Willett et al. 2013, MNRAS 435, 2835, Sec. 2).
# Size matters here: the model input is 10 x R90 across in 69 pixels, so a small galaxy's bar or
# arms span fewer PSF widths. Redshift < 0.25.
MAG_R_MIN, MAG_R_MAX = 14.0, 17.0
R90_MIN_ARCSEC = 3.0
MAG_MAIN_SAMPLE_LIMIT = 17.77  # the pivot of the magnitude-redshift relation below
Z_MAX = 0.25
# Differential number counts dN/dm ~ 10^(0.6 m) (Euclidean-like slope; Yasuda et al. 2001, AJ 122,
# 1104 measure ~0.6 for bright SDSS galaxies).
COUNT_SLOPE = 0.6
# Median redshift of the main sample ~0.10 (Strauss et al. 2002, Fig. 14); fainter galaxies lie
# further: log10 z = Z_ZP + Z_SLOPE (m - 17.77) with 0.12 dex scatter reproduces its n(z) shape.
Z_ZP, Z_SLOPE, Z_SCATTER_DEX = -0.93, 0.18, 0.12
# Flat LambdaCDM, H0 = 70, Om = 0.3 (the convention of Shen et al. 2003 size relations).
H0, OMEGA_M = 70.0, 0.3
C_KM_S = 299792.458

# Size-luminosity relations of SDSS galaxies, Shen et al. 2003 (MNRAS 343, 978), r-band Petrosian
# half-light radius in kpc: late types eq. 18 with (alpha, beta, gamma, M0) = (0.21, 0.53, -1.31,
# -20.52); early types eq. 14 with (a, b) = (0.65, -5.06); scatter ~0.2 dex (late) / 0.15 dex.
LATE_ALPHA, LATE_BETA, LATE_GAMMA, LATE_M0 = 0.21, 0.53, -1.31, -20.52
EARLY_A, EARLY_B = 0.65, -5.06
LATE_SCATTER_DEX, EARLY_SCATTER_DEX = 0.20, 0.15

# Mixture: fraction of true disks. Chosen (with the volunteer model) so that about 1/3 of the
# robust Q1 galaxies of the DES sample are disks (the study's Table 1 / Section 2).
DISK_FRACTION = 0.39
# Optical bar fraction of disks ~30-50% (e.g. Masters et al. 2011, GZ2: ~30% of disks); bars
# strong enough for volunteers are rarer, which the strength distribution below provides.
BAR_FRACTION = 0.35
# Bar light and length (simulator version 5). The bar's share of the light spans the range of
# photometric decompositions, ~1-40% (Reese et al. 2007, AJ 133, 2846): 5-35% here (mean 0.15).
# Its length a (``bar_length_arcsec``; render.bar_profile is flat to ~0.75 a and gone by ~a) is
# 0.7-1.8 disk half-light radii, so the flat part ends at 0.9-2.3 disk scale lengths h (mean
# 1.6 h), as the bars of S0-Sb galaxies, 0.5-2.5 h, mean 1.4 h (Erwin 2005, MNRAS 364, 283),
# which hold most of GZ2's strong bars. Against real SDSS spirals (benchmarks/bar_signal.py
# --real: inner m = 2 amplitude of face-on disks in the served r band, upper quartile / 90th
# percentile) version 4's weaker, shorter bars (3-20%, 0.5-1.3 hlr) gave 0.082 / 0.139 where the
# real JPEGs give 0.117 / 0.172; these give 0.103 / 0.164. Bulge and bar together leave the disk
# at least 15% of the light.
BAR_STRENGTH_MIN, BAR_STRENGTH_SPAN = 0.05, 0.30
BAR_REL_LENGTH = (0.7, 1.8)
BAR_PLUS_BULGE_MAX = 0.85
# Ovals and lenses (simulator version 6). Unbarred disks are not axisymmetric inside: oval disks
# and lenses, mildly elongated (intrinsic axis ratio ~0.6-0.9) components with a shallow profile,
# are common in unbarred and barred disks alike (Kormendy 1979, ApJ 227, 714; Kormendy & Kennicutt
# 2004, ARA&A 42, 603, Sect. 4; lenses in about half of S0-Sa galaxies, Laurikainen et al. 2009,
# ApJ 692, L34). Without them the simulated unbarred disks were smoother than real spirals: the
# inner m = 2 amplitude of face-on disks in the served r band (benchmarks/bar_signal.py --real)
# had a median of 0.034 for the unbarred ones (version 5) against 0.078 for 120 real SkyServer
# JPEGs of GZ1 spirals, so a bar was the only inner m = 2 pattern a network ever saw. With the
# values below the simulated SDSS disks reach the real 90th percentile of that statistic (0.176 /
# 0.177 in two draws, real 0.172) and their median rises from 0.043 to 0.052 (real 0.078): the
# lower half stays smoother than real (docs/findings.md, "Ovals and lenses at version 6"). Drawn from the
# galaxy's own stream OVAL_STREAM, so each galaxy keeps every version-5 parameter and gains the
# oval.
OVAL_STREAM = 100
OVAL_FRACTION = 0.8
OVAL_STRENGTH = (0.05, 0.25)  # the oval's share of the total light
OVAL_REL_SIZE = (0.4, 0.9)  # oval half-light radius / disk half-light radius
OVAL_Q = (0.5, 0.85)  # intrinsic axis ratio in the disk plane
OVAL_PLUS_REST_MAX = 0.85  # bulge + bar + oval leave the disk at least 15% of the light
# Disks with spiral arms (the rest are lenticular-like, arm-less).
ARMS_FRACTION = 0.75
# Elongated smooth galaxies ("cigars", GZ2 T07 answer): observed axis ratios of ellipticals rarely
# fall below ~0.3 (E7 is the flattest Hubble type).
CIGAR_FRACTION = 0.10
CIGAR_Q_MIN = 0.3

# Colours (g-r, r-i, r-z) of the components, rest-frame-ish SDSS values: red sequence g-r ~0.75,
# r-i ~0.40 (Strateva et al. 2001); star-forming disks g-r ~0.5; young star-forming knots ~0.3.
COLOURS = {
    "smooth": (0.75, 0.40, 0.75),
    "bulge": (0.75, 0.40, 0.75),
    "bar": (0.70, 0.37, 0.68),
    "oval": (0.70, 0.37, 0.68),  # lenses and ovals: old stars, as bars (Kormendy 1979)
    "disk": (0.55, 0.30, 0.50),
    "knots": (0.30, 0.12, 0.20),
}
# Sersic indices are quantised to this step: GalSim precomputes a Hankel-transform table per n
# (~6 ms each), cached per process, so a handful of distinct n keeps rendering fast.
SERSIC_N_STEP = 0.5

# Cosmological distance table (comoving distance by trapezoid integration; exact enough at z<0.3).
_Z_GRID = np.linspace(0.0, 0.35, 701)
_E = np.sqrt(OMEGA_M * (1 + _Z_GRID) ** 3 + (1 - OMEGA_M))
_DC_MPC = (C_KM_S / H0) * np.concatenate(
    [[0.0], np.cumsum(0.5 * (1 / _E[1:] + 1 / _E[:-1]) * np.diff(_Z_GRID))]
)


def comoving_distance_mpc(z):
    return np.interp(z, _Z_GRID, _DC_MPC)


def distance_modulus(z):
    dl = comoving_distance_mpc(z) * (1 + z)
    return 5 * np.log10(np.maximum(dl, 1e-6) * 1e6 / 10.0)


def kpc_to_arcsec(z):
    """Arcsec subtended by 1 kpc at redshift z (angular diameter distance)."""
    da_kpc = comoving_distance_mpc(z) / (1 + z) * 1e3
    return 206264.806 / da_kpc


def quantise_sersic_n(n: float) -> float:
    return round(n / SERSIC_N_STEP) * SERSIC_N_STEP


def sersic_b(n: float) -> float:
    """b_n such that the Sersic half-light radius encloses half the light."""
    return float(special.gammaincinv(2 * n, 0.5))


@dataclass
class Galaxy:
    """One intrinsic galaxy. Knot positions are in the disk plane, in units of the disk scale
    radius; ``knot_weights`` sum to 1 (arms then clumps)."""

    index: int
    id: str
    ra: float
    dec: float
    redshift: float
    mag_r: float  # Petrosian-like r magnitude (the selection magnitude)
    flux_r: float  # total r flux of the model, nanomaggies
    r90_arcsec: float  # Petrosian-like R90 (radius holding 90% of the Petrosian flux)
    r50_arcsec: float
    disk: bool
    position_angle_deg: float
    # smooth galaxies (and bulges): Sersic index, half-light radius, axis ratio
    sersic_n: float
    sersic_hlr_arcsec: float
    sersic_q: float
    # disk galaxies
    inclination_deg: float = float("nan")
    disk_hlr_arcsec: float = float("nan")
    disk_h_over_r: float = float("nan")
    bulge_to_total: float = 0.0
    arm_strength: float = 0.0  # fraction of the disk light in spiral-arm knots
    n_arms: int = 0
    arm_pitch_deg: float = float("nan")
    clump_fraction: float = 0.0  # fraction of the disk light in star-forming clumps
    bar: bool = False
    bar_strength: float = 0.0  # bar flux / total flux
    bar_length_arcsec: float = 0.0  # bar semi-major axis in the disk plane
    bar_axis_ratio: float = 1.0
    bar_angle_deg: float = 0.0  # bar angle in the disk plane from the line of nodes
    oval_strength: float = 0.0  # oval/lens flux / total flux (0: none)
    oval_hlr_arcsec: float = 0.0  # its half-light radius along its major axis, disk plane
    oval_axis_ratio: float = 1.0
    oval_angle_deg: float = 0.0  # its angle in the disk plane from the line of nodes
    colour_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)
    knot_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    knot_weights: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    n_arm_knots: int = 0
    knot_sigma: float = 0.25  # knot Gaussian sigma in units of the disk scale radius

    # --- derived ---------------------------------------------------------------------------
    @property
    def cos_inclination(self) -> float:
        return math.cos(math.radians(self.inclination_deg)) if self.disk else 1.0

    @property
    def projected_cos(self) -> float:
        """Projected minor/major ratio of the disk plane: a thick disk never looks thinner than
        its thickness, sqrt(cos^2 i + (h/r)^2 sin^2 i)."""
        if not self.disk:
            return 1.0
        c = self.cos_inclination
        return math.sqrt(c * c + (self.disk_h_over_r**2) * (1 - c * c))

    @property
    def disk_scale_arcsec(self) -> float:
        # half-light radius of an exponential = 1.67835 scale radii
        return self.disk_hlr_arcsec / 1.67835

    @property
    def true_axis_ratio(self) -> float:
        return self.projected_cos if self.disk else self.sersic_q

    @property
    def true_edge_on(self) -> bool:
        # Edge-on: inclination > 75 deg (cos i < 0.26), the limit beyond which a disk's face is
        # no longer seen; GZ's "could this be a disk viewed edge-on" targets these.
        return bool(self.disk and self.inclination_deg > 75.0)

    def component_fluxes_r(self) -> dict[str, float]:
        """r-band flux of each component; sums to flux_r."""
        f = self.flux_r
        if not self.disk:
            return {"smooth": f}
        bulge = f * self.bulge_to_total
        bar = f * self.bar_strength if self.bar else 0.0
        oval = f * self.oval_strength
        disk_all = f - bulge - bar - oval
        knots = disk_all * (self.arm_strength + self.clump_fraction)
        return {"bulge": bulge, "bar": bar, "oval": oval, "disk": disk_all - knots,
                "knots": knots}

    def colour(self, component: str) -> tuple[float, float, float]:
        base = COLOURS[component]
        return tuple(b + j for b, j in zip(base, self.colour_jitter))  # type: ignore[return-value]

    def validate(self) -> None:
        """Physical sanity of the parameters; InputError names the galaxy and the problem."""
        problems = []
        if not (self.sersic_n > 0):
            problems.append(f"Sersic index n={self.sersic_n} must be > 0 (use 0.3-6.2)")
        elif not (0.3 <= self.sersic_n <= 6.2):
            problems.append(f"Sersic index n={self.sersic_n} is outside GalSim's range 0.3-6.2")
        if not (self.sersic_hlr_arcsec > 0):
            problems.append(f"half-light radius {self.sersic_hlr_arcsec} arcsec must be > 0")
        if not (0 < self.sersic_q <= 1):
            problems.append(f"axis ratio {self.sersic_q} must lie in (0, 1]")
        if not (self.flux_r > 0) or not math.isfinite(self.mag_r):
            problems.append(f"flux {self.flux_r} nanomaggies (mag {self.mag_r}) must be > 0")
        if self.disk:
            if not (0 <= self.inclination_deg <= 90):
                problems.append(f"inclination {self.inclination_deg} deg must lie in [0, 90]")
            if not (self.disk_hlr_arcsec > 0):
                problems.append(f"disk half-light radius {self.disk_hlr_arcsec} must be > 0")
            if not (0 < self.disk_h_over_r < 1):
                problems.append(f"disk thickness h/r={self.disk_h_over_r} must lie in (0, 1)")
            if not (0 <= self.bulge_to_total < 1):
                problems.append(f"bulge-to-total {self.bulge_to_total} must lie in [0, 1)")
            if not (0 <= self.oval_strength < 1):
                problems.append(f"oval strength {self.oval_strength} must lie in [0, 1)")
            elif self.oval_strength > 0 and not (self.oval_hlr_arcsec > 0
                                                 and 0 < self.oval_axis_ratio <= 1):
                problems.append(f"oval half-light radius {self.oval_hlr_arcsec} must be > 0 and "
                                f"its axis ratio {self.oval_axis_ratio} in (0, 1]")
            comp = self.component_fluxes_r()
            if comp["disk"] <= 0:
                problems.append("bulge + bar + oval + arms + clumps leave no disk light")
        if problems:
            raise InputError(
                f"galaxy {self.id}: " + "; ".join(problems) + " - fix the galaxy parameters"
            )

    def truth_row(self) -> dict:
        """The ``true_*`` columns shared by every survey's catalogue."""
        return {
            "true_disk": bool(self.disk),
            "true_edge_on": self.true_edge_on,
            "true_bar": bool(self.disk and self.bar),
            "true_sersic_n": float(self.sersic_n),
            "true_axis_ratio": float(self.true_axis_ratio),
            "true_inclination_deg": float(self.inclination_deg) if self.disk else float("nan"),
            "true_position_angle_deg": float(self.position_angle_deg),
            "true_bulge_to_total": float(self.bulge_to_total) if self.disk else 1.0,
            "true_bar_strength": float(self.bar_strength),
            "true_bar_length_arcsec": float(self.bar_length_arcsec),
            "true_oval_strength": float(self.oval_strength),
            "true_arm_strength": float(self.arm_strength),
            "true_n_arms": int(self.n_arms),
            "true_arm_pitch_deg": float(self.arm_pitch_deg),
            "true_clump_fraction": float(self.clump_fraction),
            "true_r50_arcsec": float(self.r50_arcsec),
            "true_disk_hlr_arcsec": float(self.disk_hlr_arcsec),
            "true_disk_h_over_r": float(self.disk_h_over_r),
            "true_flux_r": float(self.flux_r),
            "true_cigar": bool((not self.disk) and self.sersic_q < 0.5),
        }

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("knot_xy"), d.pop("knot_weights")
        return d


_COLOUR_INDEX = {"g": 0, "i": 1, "z": 2}  # position in the (g - r, r - i, r - z) colours


def flux_in_band(flux_r, colours, band: str):
    """Flux in ``band`` from the r flux and colours (g - r, r - i, r - z) along the last axis:
    g = r + (g - r), i = r - (r - i), z = r - (r - z). Works on scalars and arrays."""
    if band == "r":
        return flux_r
    if band not in _COLOUR_INDEX:
        raise InputError(f"the simulator has colours for bands g, r, i, z, not {band!r}")
    colour = np.asarray(colours)[..., _COLOUR_INDEX[band]]
    sign = 1.0 if band == "g" else -1.0
    return flux_r * 10 ** (-0.4 * sign * colour)


def galaxy_id(index: int) -> str:
    return f"sim-{index:09d}"


def galaxy_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """Generator of one galaxy: a function of (seed, index, stream) only (stream 0 = intrinsic
    properties; renderers and volunteers use their own streams)."""
    if seed < 0 or index < 0:
        raise InputError(f"seed ({seed}) and galaxy index ({index}) must be >= 0")
    return np.random.default_rng([int(seed), int(index), int(stream)])


# --- Petrosian quantities in circular apertures ---------------------------------------------
# The SDSS pipeline measures Petrosian radii in circular apertures on the galaxy as projected on
# the sky (Blanton et al. 2001; Stoughton et al. 2002), and the size relation (Shen et al. 2003)
# and the study's cutouts (10 x petroR90) use those radii. An inclined disk's light falls inside a
# circle faster than a face-on disk's of the same major axis: the circular R90 of an exponential
# disk seen at cos i = 0.34 (the median robust simulated disk) is 0.73 of its face-on R90, and
# 0.69 edge-on. Until simulator version 9 the radii were those of the face-on profile, so every
# inclined disk was framed 1.4x too wide and drawn too small (docs/simulator.md, "Galaxies framed
# as the SDSS pipeline measures them").
_R_GRID = np.geomspace(1e-3, 60.0, 600)  # in units of the galaxy's largest scale
# midpoints of the quarter circle: the profiles are symmetric about both axes
_PHI = (np.arange(32) + 0.5) * (math.pi / 2) / 32
_LOG_M = np.linspace(math.log(1e-5), math.log(400.0), 4000)  # circular unit-profile table


def _enclosed(r, n, re):
    b = sersic_b(n)
    return special.gammainc(2 * n, b * (r / re) ** (1.0 / n))


def _sb(r, n, re):
    b = sersic_b(n)
    norm = b ** (2 * n) / (2 * math.pi * n * re * re * math.gamma(2 * n))
    return norm * np.exp(-b * (r / re) ** (1.0 / n))


_UNIT_TABLES: dict[float, tuple[np.ndarray, np.ndarray]] = {}


def _unit_tables(n: float) -> tuple[np.ndarray, np.ndarray]:
    """Enclosed light and surface brightness of the circular Sersic profile of index n and unit
    half-light radius on the log-radius grid _LOG_M (cached: indices are quantised)."""
    if n not in _UNIT_TABLES:
        m = np.exp(_LOG_M)
        _UNIT_TABLES[n] = (_enclosed(m, n, 1.0), _sb(m, n, 1.0))
    return _UNIT_TABLES[n]


def _component(components) -> list[tuple[float, float, float, float]]:
    """(weight, n, semi-major scale a, semi-minor scale b) of each component: (weight, n, hlr)
    is circular; (weight, n, hlr, qa, qb) has axis scales hlr x qa and hlr x qb (a sheared Sersic
    of circularised hlr: qa = 1 / sqrt(q), qb = sqrt(q); an inclined disk: qa = 1, qb = q)."""
    out = []
    for c in components:
        w, n, re = c[:3]
        qa, qb = (c[3], c[4]) if len(c) > 3 else (1.0, 1.0)
        out.append((float(w), float(n), float(re) * float(qa), float(re) * float(qb)))
    return out


def _petrosian_profile(components):
    """(radii, light inside circles of those radii, Petrosian radius) of a profile of Sersic
    components (see _component; elliptical ones as projected on the sky); Petrosian ratio 0.2,
    the SDSS definition. A profile I(x, y) = g(sqrt(x^2/a^2 + y^2/b^2)) / (a b) of circular unit
    profile g puts inside the circle of radius R the average over angle of C(R s) / (a b s^2),
    s = sqrt(cos^2 phi / a^2 + sin^2 phi / b^2), C the circular profile's enclosed light; the
    mean surface brightness on that circle is the average of g(R s) / (a b)."""
    comps = _component(components)
    r = _R_GRID * max(a for _, _, a, _ in comps)
    enc = np.zeros_like(r)
    sb = np.zeros_like(r)
    for w, n, a, b in comps:
        table_enc, table_sb = _unit_tables(n)
        s = np.sqrt(np.cos(_PHI) ** 2 / a**2 + np.sin(_PHI) ** 2 / b**2)
        log_m = np.log(r[:, None] * s[None, :])
        enc += w * (np.interp(log_m, _LOG_M, table_enc) / (a * b * s**2)).mean(axis=1)
        sb += w * (np.interp(log_m, _LOG_M, table_sb) / (a * b)).mean(axis=1)
    ratio = sb / (enc / (math.pi * r * r))
    # first radius where the ratio falls below 0.2 (ratio decreases outward)
    k = int(np.argmax(ratio < 0.2)) if (ratio < 0.2).any() else len(r) - 1
    return r, enc, float(r[k])


def petrosian_radius(components) -> float:
    """The Petrosian radius (ratio 0.2) of a profile of Sersic components (weight, n,
    half-light radius[, qa, qb]; see _component), in the half-light radii's unit."""
    return _petrosian_profile(components)[2]


def petrosian_quantities(components) -> tuple[float, float, float]:
    """(Petrosian flux fraction, R50, R90) in circular apertures of a profile made of Sersic
    components (weight, n, half-light radius[, qa, qb]; see _component), with the SDSS
    definition: Petrosian ratio 0.2, flux within 2 Petrosian radii, R50/R90 enclosing 50/90% of
    that flux (Blanton et al. 2001)."""
    r, enc, r_p = _petrosian_profile(components)
    f_p = float(np.interp(2 * r_p, r, enc))
    r50 = float(np.interp(0.5 * f_p, enc, r))
    r90 = float(np.interp(0.9 * f_p, enc, r))
    return f_p, r50, r90


def disk_axis_ratio(cos_i: float, h_over_r: float) -> float:
    """Projected axis ratio of a disk of thickness h_over_r seen at inclination cos_i (the
    oblate-spheroid relation, Hubble 1926; GalSim's InclinedExponential edge-on is ~h_over_r)."""
    return math.sqrt(cos_i**2 + h_over_r**2 * (1.0 - cos_i**2))


def _log_spiral_knots(rng, n_arms, pitch_deg, n_per_arm, r_min=0.5, r_max=3.5):
    """Knot positions along n_arms logarithmic spirals r = r0 exp(theta tan(pitch)), in disk
    scale radii, spaced so that neighbouring knots overlap into a continuous arm."""
    tanp = math.tan(math.radians(pitch_deg))
    theta_max = math.log(r_max / r_min) / tanp
    phase0 = rng.uniform(0, 2 * math.pi)
    xy = []
    for a in range(n_arms):
        t = np.linspace(0, theta_max, n_per_arm) + rng.normal(0, 0.03, n_per_arm)
        rr = r_min * np.exp(t * tanp) * (1 + rng.normal(0, 0.04, n_per_arm))
        ph = t + phase0 + 2 * math.pi * a / n_arms
        xy.append(np.stack([rr * np.cos(ph), rr * np.sin(ph)], axis=1))
    return np.concatenate(xy)


def draw_galaxy(seed: int, index: int) -> Galaxy:
    """Draw galaxy ``index`` of the population of ``seed`` (deterministic).

    Galaxies below the sample's size limit (R90_MIN_ARCSEC) are drawn again from the same
    generator, as a survey selection removes them: still a function of (seed, index) only."""
    rng = galaxy_rng(seed, index, 0)
    for _ in range(1000):
        g = _draw_one(rng, index)
        if g.r90_arcsec >= R90_MIN_ARCSEC:
            return _with_oval(g, galaxy_rng(seed, index, OVAL_STREAM)) if g.disk else g
    raise RuntimeError(f"galaxy {index}: no draw passed R90 >= {R90_MIN_ARCSEC} arcsec in 1000 tries")


def _with_oval(g: Galaxy, rng: np.random.Generator) -> Galaxy:
    """Give disk ``g`` its oval or lens (version 6), from its own stream: every version-5
    parameter of the galaxy stays as it was. The oval's light comes out of the disk's, and the
    Petrosian sizes (set by disk + bulge) are kept."""
    has_oval = bool(rng.uniform() < OVAL_FRACTION)
    strength = float(rng.uniform(*OVAL_STRENGTH))
    rel, q, angle = (float(rng.uniform(*OVAL_REL_SIZE)), float(rng.uniform(*OVAL_Q)),
                     float(rng.uniform(0, 180)))
    strength = min(strength, max(OVAL_PLUS_REST_MAX - g.bulge_to_total - g.bar_strength, 0.0))
    if not has_oval or strength <= 0:
        return g
    return replace(g, oval_strength=strength, oval_hlr_arcsec=rel * g.disk_hlr_arcsec,
                   oval_axis_ratio=q, oval_angle_deg=angle)


def _draw_one(rng: np.random.Generator, index: int) -> Galaxy:
    # magnitude from the counts, by inverting the cumulative of 10^(a m) on [MAG_R_MIN, MAG_R_MAX]
    a = COUNT_SLOPE * math.log(10)
    lo, hi = math.exp(a * MAG_R_MIN), math.exp(a * MAG_R_MAX)
    mag_r = math.log(lo + rng.uniform() * (hi - lo)) / a
    z = 10 ** (Z_ZP + Z_SLOPE * (mag_r - MAG_MAIN_SAMPLE_LIMIT) + rng.normal(0, Z_SCATTER_DEX))
    z = float(min(max(z, 0.01), Z_MAX - 1e-3))
    # r-band K-correction ~0.9 z for typical colours at z < 0.25 (Blanton & Roweis 2007 trend)
    abs_mag = mag_r - float(distance_modulus(z)) - 0.9 * z
    kpc = float(kpc_to_arcsec(z))
    # Stripe 82: where SDSS and DES overlap (the study's common sample)
    ra = float((rng.uniform(-50.0, 60.0)) % 360.0)
    dec = float(rng.uniform(-1.25, 1.25))
    pa = float(rng.uniform(0, 180))
    jitter = tuple(float(x) for x in rng.normal(0, [0.05, 0.03, 0.04]))
    disk = bool(rng.uniform() < DISK_FRACTION)

    def sized(comps) -> tuple[float, dict]:
        """Scale of the light profile ``comps`` that puts its Petrosian R50 on the size relation
        (``r50_target``), and the Galaxy fields every morphology shares."""
        f_p, r50, r90 = petrosian_quantities(comps)
        scale = r50_target / r50
        return scale, dict(
            index=index,
            id=galaxy_id(index),
            ra=ra,
            dec=dec,
            redshift=z,
            mag_r=mag_r,
            flux_r=mag_to_flux(mag_r) / f_p,
            r90_arcsec=r90 * scale,
            r50_arcsec=r50 * scale,
            disk=disk,
            position_angle_deg=pa,
            colour_jitter=jitter,
        )

    if not disk:
        log_r = -0.4 * EARLY_A * abs_mag + EARLY_B + rng.normal(0, EARLY_SCATTER_DEX)
        r50_target = 10**log_r * kpc
        n = quantise_sersic_n(rng.uniform(2.5, 6.0))
        cigar = rng.uniform() < CIGAR_FRACTION
        q = float(rng.uniform(CIGAR_Q_MIN, 0.5) if cigar else rng.uniform(0.5, 1.0))
        # the size relation is in circular Petrosian R50 of the sheared (area-preserving) profile
        hlr, common = sized([(1.0, n, 1.0, 1.0 / math.sqrt(q), math.sqrt(q))])
        return Galaxy(**common, sersic_n=n, sersic_hlr_arcsec=hlr, sersic_q=q)

    lum_term = math.log10(1 + 10 ** (-0.4 * (abs_mag - LATE_M0)))
    log_r = (
        -0.4 * LATE_ALPHA * abs_mag
        + (LATE_BETA - LATE_ALPHA) * lum_term
        + LATE_GAMMA
        + rng.normal(0, LATE_SCATTER_DEX)
    )
    r50_target = 10**log_r * kpc
    cos_i = rng.uniform(0, 1)  # isotropic orientations: uniform in cos i
    incl = math.degrees(math.acos(cos_i))
    h_over_r = float(rng.uniform(0.08, 0.18))
    bt = float(0.6 * rng.beta(1.2, 3.0))
    n_b = quantise_sersic_n(rng.uniform(1.5, 4.0))
    bulge_rel = float(rng.uniform(0.15, 0.4))  # bulge hlr / disk hlr
    q_b_int = float(rng.uniform(0.6, 0.9))  # intrinsic bulge flattening
    q_b = math.sqrt(cos_i**2 + q_b_int**2 * (1 - cos_i**2))
    has_arms = rng.uniform() < ARMS_FRACTION
    arm_strength = float(rng.uniform(0.08, 0.45)) if has_arms else 0.0
    n_arms = int(rng.choice([2, 3, 4], p=[0.55, 0.25, 0.2])) if has_arms else 0
    pitch = float(rng.uniform(10, 35)) if has_arms else float("nan")
    clump = float(rng.uniform(0.0, 0.08)) if has_arms else 0.0
    has_bar = bool(rng.uniform() < BAR_FRACTION)
    bar_strength = min(float(BAR_STRENGTH_MIN + BAR_STRENGTH_SPAN * rng.beta(1.3, 2.5)),
                       BAR_PLUS_BULGE_MAX - bt) if has_bar else 0.0
    bar_rel = float(rng.uniform(*BAR_REL_LENGTH)) if has_bar else 0.0  # bar length a / disk hlr
    bar_q = float(rng.uniform(0.2, 0.4)) if has_bar else 1.0
    bar_angle = float(rng.uniform(0, 180)) if has_bar else 0.0
    # Knots: arms (continuous chains) then clumps (scattered, exponentially distributed radii)
    if has_arms:
        pitch_len = 3.0 / math.sin(math.radians(pitch))  # arm length in scale radii
        n_per_arm = int(min(max(pitch_len / 0.3, 8), 40))
        arm_xy = _log_spiral_knots(rng, n_arms, pitch, n_per_arm)
        rr = np.hypot(arm_xy[:, 0], arm_xy[:, 1])
        # arm light follows the exponential disk, with knot-to-knot scatter (clumpy arms)
        w_arm = rr * np.exp(-rr) * rng.lognormal(0, 0.35, len(rr))
        w_arm = w_arm / w_arm.sum() * arm_strength
        n_clumps = int(rng.integers(3, 12))
        cr = rng.gamma(2.0, 0.6, n_clumps) + 0.3  # clumps within ~3 scale radii
        cph = rng.uniform(0, 2 * math.pi, n_clumps)
        clump_xy = np.stack([cr * np.cos(cph), cr * np.sin(cph)], axis=1)
        w_cl = rng.lognormal(0, 0.5, n_clumps)
        w_cl = w_cl / w_cl.sum() * clump
        knot_xy = np.concatenate([arm_xy, clump_xy])
        w = np.concatenate([w_arm, w_cl])
        knot_weights = w / w.sum()
        n_arm_knots = len(arm_xy)
    else:
        knot_xy, knot_weights, n_arm_knots = np.zeros((0, 2)), np.zeros(0), 0
    # Sizes: set the disk hlr so the circular Petrosian R50 of disk + bulge as projected on the
    # sky (inclined disk, sheared bulge) matches the size relation (version 9)
    q_d = disk_axis_ratio(cos_i, h_over_r)
    comps = [(1 - bt, 1.0, 1.0, 1.0, q_d)]
    if bt > 0:
        comps.append((bt, n_b, bulge_rel, 1.0 / math.sqrt(q_b), math.sqrt(q_b)))
    hlr_d, common = sized(comps)
    return Galaxy(
        **common,
        sersic_n=n_b,
        sersic_hlr_arcsec=bulge_rel * hlr_d,
        sersic_q=q_b,
        inclination_deg=incl,
        disk_hlr_arcsec=hlr_d,
        disk_h_over_r=h_over_r,
        bulge_to_total=bt,
        arm_strength=arm_strength,
        n_arms=n_arms,
        arm_pitch_deg=pitch,
        clump_fraction=clump,
        bar=has_bar,
        bar_strength=bar_strength,
        bar_length_arcsec=bar_rel * hlr_d,
        bar_axis_ratio=bar_q,
        bar_angle_deg=bar_angle,
        knot_xy=knot_xy,
        knot_weights=knot_weights,
        n_arm_knots=n_arm_knots,
    )
