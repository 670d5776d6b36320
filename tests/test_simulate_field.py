"""The sky around each simulated galaxy (simulator version 7): number counts, rendering, and the
same field for every survey without touching the galaxy or its votes."""

import math

import numpy as np
import pytest
from scipy import integrate

from morphtransfer.errors import InputError
from morphtransfer.simulate import field as F
from morphtransfer.simulate.pipeline import simulate_galaxy, survey_stream
from morphtransfer.simulate.population import draw_galaxy, galaxy_rng
from morphtransfer.simulate.render import observe, render_field, stamp_geometry
from morphtransfer.surveys import get_survey, mag_to_flux


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _one_source(kind, x, y, mag, hlr=0.0, q=1.0, colours=(0.5, 0.2, 0.35), half=40.0):
    return F.Field(np.array([x]), np.array([y]), np.array([mag]), np.array([kind], dtype=np.int8),
                   np.array([colours], dtype=float), np.array([hlr]), np.array([q]), np.array([0.0]),
                   half)


def test_counts_follow_the_star_and_galaxy_number_counts():
    # 400 frames of 100" x 100": the mean numbers brighter than r = 21 must be the integrals of
    # the counts over the area (companions add n(m) times the integral of w over the frame)
    half, n_frames = 50.0, 400
    area = (2 * half / 3600) ** 2
    stars = gals = 0
    for i in range(n_frames):
        f = F.draw_field(np.random.default_rng([5, i]), half)
        inside = (np.abs(f.x_arcsec) < half) & (np.abs(f.y_arcsec) < half)
        assert inside.all()
        stars += int(((f.kind == F.STAR) & (f.mag_r < 21)).sum())
        gals += int(((f.kind == F.GALAXY) & (f.mag_r < 21)).sum())
    n_star = integrate.quad(F.star_counts, F.FIELD_MAG_MIN, 21, points=[F.STAR_BREAK_MAG])[0]
    n_gal = integrate.quad(F.galaxy_counts, F.FIELD_MAG_MIN, 21)[0]
    # the per-field density factors are lognormal: their mean is exp((s ln 10)^2 / 2)
    boost_s = math.exp(0.5 * (F.STAR_DENSITY_SCATTER_DEX * math.log(10)) ** 2)
    boost_g = math.exp(0.5 * (F.GAL_DENSITY_SCATTER_DEX * math.log(10)) ** 2)
    expect_s = n_star * area * boost_s * n_frames
    # companions inside the square: at most the disk of equal area's integral
    expect_g_lo = n_gal * area * boost_g * n_frames
    expect_g_hi = expect_g_lo + n_gal * F.companion_mean(half) * boost_g * n_frames
    assert abs(stars - expect_s) < 4 * math.sqrt(expect_s) + 0.03 * expect_s
    assert expect_g_lo + 0.5 * (expect_g_hi - expect_g_lo) - 4 * math.sqrt(expect_g_hi) < gals
    assert gals < expect_g_hi + 4 * math.sqrt(expect_g_hi)
    # the literature's scale brighter than r = 21, per deg^2: stars ~1,000 (NGP) to ~4,000
    # (|b| = 30 deg), Juric et al. 2008; galaxies ~3,000-4,000, Yasuda et al. 2001
    assert 1500 < n_star < 3500 and 2500 < n_gal < 4500


def test_companions_crowd_the_centre():
    # with clustering, galaxies within 20" of the centre are denser than in the outer frame
    half = 60.0
    inner = outer = 0
    for i in range(300):
        f = F.draw_field(np.random.default_rng([6, i]), half)
        r = np.hypot(f.x_arcsec, f.y_arcsec)[f.kind == F.GALAXY]
        inner += int((r < 20).sum())
        outer += int(((r > 40) & (r < 60)).sum())
    density_in = inner / (math.pi * 20**2)
    density_out = outer / (math.pi * (60**2 - 40**2))
    # w(theta) = 0.10 (theta / 1')^-0.8 averages +0.39 within 20" (from 2") and +0.12 at 40-60":
    # a density ratio of 1.39 / 1.12 = 1.24
    assert 1.12 < density_in / density_out < 1.36


def test_field_is_a_function_of_seed_and_index_and_keeps_the_galaxy():
    g = draw_galaxy(3, 11)
    a, b = F.galaxy_field(3, 11, g.r90_arcsec), F.galaxy_field(3, 11, g.r90_arcsec)
    np.testing.assert_array_equal(a.mag_r, b.mag_r)
    np.testing.assert_array_equal(a.x_arcsec, b.x_arcsec)
    c = F.galaxy_field(3, 12, g.r90_arcsec)
    assert len(c) != len(a) or not np.array_equal(c.mag_r, a.mag_r)
    # the field covers the cutout (10 x R90) and a margin
    assert a.half_side_arcsec == pytest.approx(5 * g.r90_arcsec + F.FIELD_MARGIN_ARCSEC)
    a.validate()


def test_a_field_star_lands_where_and_as_bright_as_drawn():
    sv = get_survey("des")
    geom = stamp_geometry(sv, 8.0)
    psf = {b.name: b.fwhm_arcsec for b in sv.bands}
    x, y = 6.3, -4.1
    img = render_field(_one_source(F.STAR, x, y, 19.0), sv, geom, psf)
    r = sv.band_names.index("r")
    assert img[r].sum() == pytest.approx(mag_to_flux(19.0), rel=1e-3)
    # g - r = 0.5: g is 0.5 mag fainter than r
    assert img[0].sum() / img[r].sum() == pytest.approx(10 ** (-0.4 * 0.5), rel=1e-3)
    n = geom.n_pix
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    s = geom.pixel_scale_arcsec
    w = img[r] / img[r].sum()
    assert (w * xx).sum() * s == pytest.approx(x, abs=0.02)
    assert (w * yy).sum() * s == pytest.approx(y, abs=0.02)


def test_an_extended_field_galaxy_is_wider_than_a_star():
    sv = get_survey("sdss")
    geom = stamp_geometry(sv, 8.0)
    psf = {b.name: b.fwhm_arcsec for b in sv.bands}
    r = sv.band_names.index("r")
    widths = []
    for fld in (_one_source(F.STAR, 0, 0, 18.0),
                _one_source(F.GALAXY, 0, 0, 18.0, hlr=2.0, q=0.4),  # bright: its own GalSim profile
                _one_source(F.GALAXY, 0, 0, 22.0, hlr=1.2)):  # faint: its size class
        img = render_field(fld, sv, geom, psf)[r]
        assert img.sum() == pytest.approx(float(fld.band_fluxes("r")[0]), rel=2e-3)
        widths.append(float(((img > 0.5 * img.max())).sum()))
    assert widths[1] > 3 * widths[0] and widths[2] > 1.5 * widths[0]


def test_each_survey_renders_what_its_depth_reaches():
    # r = 23.5: below SDSS's limit (its 5 sigma depth, 22.73), inside DES's (23.95)
    assert F.render_limit(get_survey("sdss")) == pytest.approx(22.73 + F.RENDER_DEPTH_MARGIN)
    faint = _one_source(F.STAR, 3.0, 3.0, 23.5)
    for name, seen in (("sdss", False), ("des", True)):
        sv = get_survey(name)
        img = render_field(faint, sv, stamp_geometry(sv, 8.0), {b.name: b.fwhm_arcsec for b in sv.bands})
        assert bool(img.sum() > 0.5 * mag_to_flux(23.5)) == seen


def test_the_same_field_in_both_surveys_and_the_votes_unchanged():
    seed, index = 0, 3  # a disk with 7 sources brighter than r = 22 around it
    g = draw_galaxy(seed, index)
    res = simulate_galaxy(seed, index, ("sdss", "des"))
    rows = {s: r for s, (r, _) in res.items()}
    for col in ("field_n_sources_r22", "field_n_stars_r22", "field_brightest_mag_r"):
        assert rows["sdss"][col] == rows["des"][col]
    assert rows["sdss"]["field_n_sources_r22"] == 7
    # the visibilities (hence votes) are the galaxy's alone: identical with and without the field
    sv = get_survey("sdss")
    fld = F.galaxy_field(seed, index, g.r90_arcsec)
    with_f = observe(g, sv, galaxy_rng(seed, index, survey_stream("sdss")), field=fld)
    without = observe(g, sv, galaxy_rng(seed, index, survey_stream("sdss")))
    assert with_f.visibility == without.visibility
    assert with_f.visibility["vis_axis_ratio"] == pytest.approx(rows["sdss"]["vis_axis_ratio"])
    np.testing.assert_array_equal(with_f.images, res["sdss"][1])
    assert np.abs(with_f.images - without.images).max() > 0.05  # the field is in the image


def test_bad_fields_are_refused():
    with pytest.raises(InputError, match="half side"):
        F.draw_field(np.random.default_rng(0), -3.0)
    bad = _one_source(F.GALAXY, 0, 0, 20.0, hlr=0.0)
    with pytest.raises(InputError, match="half-light radius"):
        bad.validate()
    with pytest.raises(InputError, match="bands g, r, i, z"):
        _one_source(F.STAR, 0, 0, 20.0).band_fluxes("u")


def test_the_fast_gaussians_agree_with_galsim():
    # a star: the pixel-integrated Gaussian is GalSim's Gaussian PSF drawn with its pixel response
    import galsim

    sv = get_survey("des")
    geom = stamp_geometry(sv, 6.0)
    psf = {b.name: b.fwhm_arcsec for b in sv.bands}
    r = sv.band_names.index("r")
    x, y = 3.37, 2.11
    fast = render_field(_one_source(F.STAR, x, y, 19.0), sv, geom, psf)[r]
    n, s = geom.n_pix, geom.pixel_scale_arcsec
    ref = galsim.ImageD(n, n, xmin=0, ymin=0, scale=s)
    galsim.Gaussian(fwhm=psf["r"], flux=mag_to_flux(19.0)).drawImage(
        image=ref, center=galsim.PositionD(n // 2 + x / s, n // 2 + y / s))
    ref = ref.array
    assert np.abs(fast - ref).max() < 1e-4 * ref.max()
    # a faint galaxy: a Gaussian of its half-light radius, after the PSF, has the peak and the
    # half-light radius of the GalSim exponential (the same source drawn as a bright one, scaled)
    yy, xx = np.mgrid[0:n, 0:n]

    def half_light_radius(img):
        w = img / img.sum()
        rr = np.hypot(xx - (w * xx).sum(), yy - (w * yy).sum()).ravel()
        o = np.argsort(rr)
        return rr[o][np.searchsorted(np.cumsum(w.ravel()[o]), 0.5)]

    for hlr in (0.3, 0.6, 1.0):
        faint = render_field(_one_source(F.GALAXY, x, y, 21.0, hlr=hlr), sv, geom, psf)[r]
        exact = render_field(_one_source(F.GALAXY, x, y, 20.0, hlr=hlr), sv, geom, psf)[r] / 10**0.4
        assert faint.sum() == pytest.approx(exact.sum(), rel=0.01)
        assert faint.max() == pytest.approx(exact.max(), rel=0.1)
        assert half_light_radius(faint) == pytest.approx(half_light_radius(exact), rel=0.08)
