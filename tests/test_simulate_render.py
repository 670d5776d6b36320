"""The simulator's physics: pixels, PSF, flux, orientation, noise and visibility per survey."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import special

from morphtransfer.errors import InputError
from morphtransfer.simulate.population import Galaxy, draw_galaxy, galaxy_rng
from morphtransfer.simulate.render import (
    FWHM_TO_SIGMA,
    KGrid,
    knots_kimage,
    measure_shape,
    observe,
    stamp_geometry,
    render_point_source,
)
from morphtransfer.data.preprocess import preprocess_cutout
from morphtransfer.simulate.volunteers import VolunteerModel, draw_votes, vote_probabilities
from morphtransfer.surveys import get_survey, mag_to_flux


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # small matrix products on a shared 2-core machine: threads only oversubscribe
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _moments(img):
    n = img.shape[0]
    y, x = np.mgrid[0:n, 0:n] - n // 2
    f = img.sum()
    cx, cy = (img * x).sum() / f, (img * y).sum() / f
    var_x = (img * (x - cx) ** 2).sum() / f
    return cx, cy, var_x


def _first(pred, start=0):
    for i in range(start, start + 500):
        g = draw_galaxy(0, i)
        if pred(g):
            return g
    raise AssertionError("no galaxy of the kind in the first 500")


@pytest.mark.parametrize("name", ["sdss", "des"])
def test_point_source_pixel_scale_and_psf_fwhm_match_survey_table(name):
    sv = get_survey(name)
    stamps, geom = render_point_source(sv, flux=1000.0, n_pix=61, offset_arcsec=(2.0, -1.0))
    assert geom.pixel_scale_arcsec == sv.pixel_scale_arcsec
    for j, band in enumerate(sv.bands):
        img = stamps[j]
        assert img.sum() == pytest.approx(1000.0, rel=1e-3)  # flux conserved
        cx, cy, var_x = _moments(img)
        # a 2" shift is 2 / pixel_scale pixels: 5.05 px in SDSS, 7.60 px in DES
        assert cx == pytest.approx(2.0 / sv.pixel_scale_arcsec, abs=0.02)
        assert cy == pytest.approx(-1.0 / sv.pixel_scale_arcsec, abs=0.02)
        # Gaussian PSF convolved with a box pixel: variance sigma^2 + pixel^2 / 12 (in pixels)
        sigma_px = math.sqrt(var_x - 1.0 / 12.0)
        fwhm = sigma_px * sv.pixel_scale_arcsec / FWHM_TO_SIGMA
        assert fwhm == pytest.approx(band.fwhm_arcsec, rel=0.02), band.name


def test_sky_noise_per_pixel_matches_the_depth_noise_model():
    sv = get_survey("sdss")
    rng = np.random.default_rng(3)
    stamps, _ = render_point_source(sv, flux=1e-6, n_pix=101, rng=rng)
    for j, b in enumerate(sv.band_names):
        assert stamps[j].std() == pytest.approx(sv.sky_noise_per_pixel(b), rel=0.05)


def test_sdss_sky_noise_agrees_with_the_sky_brightness_and_photometric_calibration():
    """The Survey table sets SDSS noise from 5-sigma depths (York et al. 2000, at each band's
    seeing). An independent route gives the same noise within 0.45 mag of depth: the sky's own
    Poisson noise in electrons, from its surface brightness, the counts a 20th-magnitude star
    gives in the 53.9 s drift-scan exposure (zero points aa ~ -24.4 / -24.0 / -23.7, extinction
    k ~ 0.17 / 0.10 / 0.06 at airmass 1.2) and the CCD gains (3.9 / 4.7 / 4.9 e-/DN; Stoughton et
    al. 2002), plus 5 e- of read noise. Versions 1-3 of the simulator, which read DR7's 95%
    completeness limits as 5 sigma, were 0.6-1.1 mag too shallow by this check."""
    sv = get_survey("sdss")
    calib = {"g": (-24.4, 0.17, 3.9), "r": (-24.0, 0.10, 4.7), "i": (-23.7, 0.06, 4.9)}
    for b, (aa, k, gain) in calib.items():
        dn_per_s_mag20 = 10 ** (-0.4 * (20.0 + aa + k * 1.2))
        e_per_nmgy = dn_per_s_mag20 * 53.9 * gain * 10 ** (-0.4 * (22.5 - 20.0))
        sky_e = mag_to_flux(sv.band(b).sky_mag_arcsec2) * sv.pixel_scale_arcsec**2 * e_per_nmgy
        sigma_nmgy = math.sqrt(sky_e + 5.0**2) / e_per_nmgy
        ratio = sv.sky_noise_per_pixel(b) / sigma_nmgy
        assert abs(2.5 * math.log10(ratio)) < 0.45, (b, ratio)


def test_total_flux_matches_the_magnitude_within_noise():
    g = _first(lambda g: not g.disk)
    sv = get_survey("des")
    obs = observe(g, sv, galaxy_rng(0, g.index, 2), keep_stamps=True)
    r = sv.band_names.index("r")
    total = float(obs.stamps[r].sum())
    var = (obs.geometry.binning * sv.sky_noise_per_pixel("r")) ** 2 * obs.stamps[r].size
    var += g.flux_r / sv.electrons_per_nanomaggy("r")
    # the 10 x R90 square holds at least the light within a circle of radius 5 R90 (Sersic
    # enclosed-light curve), and never more than the total
    b = special.gammaincinv(2 * g.sersic_n, 0.5)
    x = b * (5 * g.r90_arcsec / g.sersic_hlr_arcsec) ** (1 / g.sersic_n)
    inside = special.gammainc(2 * g.sersic_n, x)
    assert inside * g.flux_r * 0.995 < float(obs.models[r].sum()) < g.flux_r * 1.001
    assert abs(total - float(obs.models[r].sum())) < 5 * math.sqrt(var)
    # the Petrosian-like selection magnitude holds most, not all, of the light: ~72% of a
    # Sersic n = 6 (Graham et al. 2005, PASA 22, 118), a little less for a flattened one
    assert mag_to_flux(g.mag_r) <= g.flux_r * 1.0001
    assert mag_to_flux(g.mag_r) > 0.70 * g.flux_r


def _edge_on(pa):
    g = _first(lambda g: g.disk and not g.bar)
    return dataclasses.replace(
        g, inclination_deg=88.0, position_angle_deg=pa, bulge_to_total=0.05,
        knot_xy=np.zeros((0, 2)), knot_weights=np.zeros(0), arm_strength=0.0,
        clump_fraction=0.0, r90_arcsec=max(g.r90_arcsec, 6.0), disk_hlr_arcsec=max(g.disk_hlr_arcsec, 3.0),
    )


@pytest.mark.parametrize("pa", [30.0, 120.0])
def test_edge_on_disk_is_elongated_along_its_position_angle(pa):
    g = _edge_on(pa)
    obs = observe(g, "des", np.random.default_rng(0), keep_stamps=True)
    q, angle = measure_shape(obs.models[1], threshold=0.0)
    assert q < 0.4
    assert abs(((angle - pa) + 90) % 180 - 90) < 2.0
    # and the survey's measure of thinness sees it as thin
    assert obs.visibility["vis_axis_ratio"] < 0.35


def test_des_image_has_higher_signal_to_noise_than_sdss():
    g = _first(lambda g: g.disk and g.mag_r > 16.8)  # a faint one: sky noise dominates
    snr = {}
    for name in ("sdss", "des"):
        obs = observe(g, name, np.random.default_rng(1), keep_stamps=True)
        img = obs.stamps[1]
        n = img.shape[0]
        y, x = np.mgrid[0:n, 0:n] - n // 2
        rr = np.hypot(x, y) * obs.geometry.pixel_scale_arcsec
        aperture = rr < g.r90_arcsec
        sky = rr > 3 * g.r90_arcsec  # pure-sky annulus near the cutout edge
        measured = img[aperture].sum() / (img[sky].std() * math.sqrt(aperture.sum()))
        snr[name] = measured
        assert obs.snr_r > 0
    # DES Y1 is ~1.2 mag deeper in r at 10 sigma vs 5 sigma: several times the S/N
    assert snr["des"] > 2.0 * snr["sdss"]


def test_faint_features_are_more_visible_in_des_than_in_sdss():
    gals = [draw_galaxy(0, i) for i in range(160)]
    barred = [g for g in gals if g.bar and g.inclination_deg < 70][:8]
    armed = [g for g in gals if g.arm_strength > 0 and g.inclination_deg < 70][:8]
    thin = [g for g in gals if g.true_edge_on][:6]
    assert len(barred) == 8 and len(armed) == 8 and len(thin) == 6

    def vis(g, name, key):
        return observe(g, name, galaxy_rng(0, g.index, 7)).visibility[key]

    bar_ratio = [vis(g, "des", "vis_bar") / vis(g, "sdss", "vis_bar") for g in barred]
    arm_ratio = [vis(g, "des", "vis_arms") / vis(g, "sdss", "vis_arms") for g in armed]
    q_diff = [vis(g, "sdss", "vis_axis_ratio") - vis(g, "des", "vis_axis_ratio") for g in thin]
    assert np.median(bar_ratio) > 1.2 and np.mean(np.array(bar_ratio) > 1) >= 0.75
    assert np.median(arm_ratio) > 1.5 and np.mean(np.array(arm_ratio) > 1) >= 0.75
    assert np.median(q_diff) > 0.01  # thin disks look thinner in DES (seeing, depth)


def test_model_input_is_the_studys_preprocessing_of_the_survey_stamp():
    g = draw_galaxy(0, 5)
    obs = observe(g, "sdss", np.random.default_rng(0), keep_stamps=True)
    assert obs.images.shape == (3, 69, 69) and obs.images.dtype == np.float32
    assert np.allclose(obs.images.max(axis=(1, 2)), 1.0)
    # crop 10 x R90 of the stamp, area-average to 69 x 69, each band / its max (shared code)
    assert obs.geometry.cutout_arcsec == pytest.approx(10 * g.r90_arcsec)
    assert obs.geometry.n_pix * obs.geometry.pixel_scale_arcsec > obs.geometry.cutout_arcsec
    # SDSS serves a JPEG: the model input is the preprocessed 8-bit product, not the fluxes
    assert obs.served.shape == obs.stamps.shape
    assert obs.served.min() >= 0 and obs.served.max() <= 255
    assert np.array_equal(obs.served, np.round(obs.served))
    again = preprocess_cutout(obs.served, obs.geometry.pixel_scale_arcsec, g.r90_arcsec)
    assert np.allclose(again, obs.images, atol=1e-6)
    # a survey without an image product: the model sees the noisy fluxes themselves
    linear = dataclasses.replace(get_survey("sdss"), image_product=None)
    obs = observe(g, linear, np.random.default_rng(0), keep_stamps=True)
    assert obs.served is None
    again = preprocess_cutout(obs.stamps, obs.geometry.pixel_scale_arcsec, g.r90_arcsec)
    assert np.allclose(again, obs.images, atol=1e-6)


def test_arm_knots_and_bar_follow_the_disk_projection():
    """Knots and bar live in the disk plane: a ring of knots in an inclined disk projects to an
    ellipse with the disk's axis ratio and position angle."""
    g = _first(lambda g: g.disk and g.arm_strength > 0)
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    ring = np.stack([3 * np.cos(t), 3 * np.sin(t)], axis=1)
    g = dataclasses.replace(g, inclination_deg=70.0, position_angle_deg=40.0, knot_xy=ring,
                            knot_weights=np.full(60, 1 / 60), r90_arcsec=max(g.r90_arcsec, 6.0))
    geom = stamp_geometry(get_survey("des"), g.r90_arcsec)
    grid = KGrid(geom)
    img = grid.to_stamp(knots_kimage(g, grid) * grid.gaussian_psf(1.0) * grid.pixel)
    q, angle = measure_shape(img, threshold=0.0)
    assert img.sum() == pytest.approx(1.0, rel=1e-3)
    assert abs(angle - 40.0) < 2.0
    assert q == pytest.approx(g.projected_cos, abs=0.06)


def test_bad_parameters_raise_input_error():
    g = draw_galaxy(0, 0)
    with pytest.raises(InputError, match="Sersic index"):
        observe(dataclasses.replace(g, sersic_n=-1.0), "sdss", np.random.default_rng(0))
    with pytest.raises(InputError, match="sim-000000000"):
        observe(dataclasses.replace(g, sersic_hlr_arcsec=0.0), "des", np.random.default_rng(0))
    with pytest.raises(InputError, match="unknown survey"):
        observe(g, "hubble", np.random.default_rng(0))
    with pytest.raises(InputError):
        render_point_source("sdss", flux=-1.0)
    with pytest.raises(InputError):
        vote_probabilities(-1.0, 0.0, 0.5, VolunteerModel())


def test_votes_follow_the_decision_tree():
    m = VolunteerModel()
    rng = np.random.default_rng(0)
    # arms and bar ~6x their half-notice visibilities (as version 4's 20 against 3.2 and 3.5)
    p = vote_probabilities(np.full(200, 20.0), np.full(200, 6 * m.bar_vis50), np.full(200, 0.8),
                           m, rng)
    c = draw_votes(p, np.full(200, 40), m, rng)
    total = c["smooth_or_featured_smooth_count"] + c["smooth_or_featured_featured_or_disk_count"]
    total += c["smooth_or_featured_artifact_count"]
    assert (total == 40).all()
    edge = c["disk_edge_on_yes_count"] + c["disk_edge_on_no_count"]
    assert (edge == c["smooth_or_featured_featured_or_disk_count"]).all()
    assert (c["bar_yes_count"] + c["bar_no_count"] == c["disk_edge_on_no_count"]).all()
    # strongly visible arms and bar on a round galaxy: featured, not edge-on, barred
    assert c["smooth_or_featured_featured_or_disk_count"].mean() > 30
    assert c["bar_yes_count"].sum() > 0.8 * c["disk_edge_on_no_count"].sum()
    # invisible features on a round galaxy: mostly smooth
    p0 = vote_probabilities(np.zeros(200), np.zeros(200), np.full(200, 0.9), m, rng)
    c0 = draw_votes(p0, np.full(200, 40), m, rng)
    assert c0["smooth_or_featured_smooth_count"].mean() > 30


def test_galaxy_validate_names_the_galaxy():
    g = Galaxy(index=1, id="sim-x", ra=0, dec=0, redshift=0.1, mag_r=17.0, flux_r=100.0,
               r90_arcsec=5, r50_arcsec=2, disk=False, position_angle_deg=0, sersic_n=7.0,
               sersic_hlr_arcsec=2.0, sersic_q=1.2)
    with pytest.raises(InputError, match=r"sim-x.*Sersic index n=7.0.*axis ratio 1.2"):
        g.validate()


def test_arms_fade_with_inclination_and_are_clearer_in_des():
    g = _first(lambda g: g.arm_strength > 0.3 and g.mag_r < 16.5)
    vis = {
        s: [observe(dataclasses.replace(g, inclination_deg=i), s, np.random.default_rng(0))
            .visibility["vis_arms"] for i in (0.0, 50.0, 80.0)]
        for s in ("sdss", "des")
    }
    for s, v in vis.items():
        assert v[0] > v[1] > v[2] > 0, s  # foreshortened arms blur into the disk
    # DES is ~1.2 mag deeper (5 sigma, r) and sharper (1.07" vs 1.4"); with SDSS at its real
    # depth (simulator version 4) its arms measure 1.39-1.60x more visible here (the contrast
    # floor, not the sky, limits a bright galaxy's arms); versions 1-3, with SDSS 1.6x too
    # noisy, gave more than 1.5x
    assert all(d > 1.3 * s for d, s in zip(vis["des"], vis["sdss"]))


def test_population_is_the_gz2_sample():
    """The study's galaxies are GZ2's: r < 17.0 and R90 > 3 arcsec (Willett et al. 2013)."""
    from morphtransfer.simulate.population import MAG_R_MAX, R90_MIN_ARCSEC

    gals = [draw_galaxy(3, i) for i in range(400)]
    mags = np.array([g.mag_r for g in gals])
    r90 = np.array([g.r90_arcsec for g in gals])
    assert (MAG_R_MAX, R90_MIN_ARCSEC) == (17.0, 3.0)
    assert mags.max() < 17.0 and mags.min() >= 14.0
    assert r90.min() >= 3.0
    # counts rise steeply to the limit: most galaxies are within a magnitude of it
    assert np.mean(mags > 16.0) > 0.5
    # the same (seed, index) always gives the same galaxy, redraws included
    assert draw_galaxy(3, 17).r90_arcsec == gals[17].r90_arcsec


def test_bar_is_flat_and_ends_at_its_length():
    """A face-on bar along x: flat to ~0.75 a, (almost) no light beyond a, unlike a Gaussian."""
    import galsim

    from morphtransfer.simulate import render

    base = _first(lambda g: g.disk and g.bar)
    g = dataclasses.replace(base, inclination_deg=0.0, bar_angle_deg=0.0, bar_length_arcsec=4.0,
                            bar_axis_ratio=0.25)
    scale = 0.05

    def major_axis(obj):
        img = obj.withFlux(1.0).drawImage(nx=241, ny=241, scale=scale, method="no_pixel").array
        return img[120, :]  # along the bar's major axis

    flat = major_axis(render.bar_profile(g))
    # simulator_version 1's bar of the same length: a Gaussian with a ~ 2 sigma, sheared to q
    q = g.bar_axis_ratio
    gauss = major_axis(galsim.Gaussian(sigma=0.5 * 4.0 * math.sqrt(q)).shear(q=q, beta=0 * galsim.degrees))
    x = (np.arange(241) - 120) * scale
    # flat: the surface brightness at 0.6 a is still > 90% of the centre's; beyond 1.1 a < 1%
    assert flat[np.argmin(abs(x - 2.4))] > 0.9 * flat[120]
    assert flat[abs(x) > 4.4].max() < 0.01 * flat[120]
    # the Gaussian of the same length has dropped to ~ exp(-0.5 * 1.2^2) = 0.49 at 0.6 a
    assert gauss[np.argmin(abs(x - 2.4))] < 0.55 * gauss[120]
    assert isinstance(render.bar_profile(g), galsim.GSObject)


def _inner_m2(img: np.ndarray, r_max: float) -> float:
    """|sum I e^(2i theta)| / sum I inside r_max pixels of the stamp centre."""
    n = img.shape[-1]
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0
    inner = (np.hypot(x, y) < r_max) & (np.hypot(x, y) > 1.0)
    return float(abs(np.sum(img[inner] * np.exp(2j * np.arctan2(y, x)[inner]))) / img[inner].sum())


def test_oval_gives_an_unbarred_face_on_disk_inner_m2_and_keeps_its_light():
    """Simulator version 6: an oval/lens of 20% of the light makes a face-on, unbarred, arm-less
    disk's inner isophotes elongated (m = 2 several times that of the same disk without it), its
    light taken from the disk (total flux unchanged), and it is in the truth table."""
    base = _first(lambda g: g.disk and not g.bar and g.oval_strength > 0)
    kw = dict(inclination_deg=0.0, arm_strength=0.0, clump_fraction=0.0, n_arms=0,
              knot_xy=np.zeros((0, 2)), knot_weights=np.zeros(0), n_arm_knots=0)
    with_oval = dataclasses.replace(base, oval_strength=0.2, oval_axis_ratio=0.6,
                                    oval_hlr_arcsec=0.7 * base.disk_hlr_arcsec, **kw)
    without = dataclasses.replace(with_oval, oval_strength=0.0)
    sv = get_survey("sdss")
    obs = [observe(g, sv, galaxy_rng(0, base.index, 1), keep_stamps=True) for g in (with_oval, without)]
    r_band = [o.models[sv.band_names.index("r")] for o in obs]
    scale = base.disk_hlr_arcsec / obs[0].geometry.pixel_scale_arcsec  # disk hlr in stamp pixels
    m2 = [_inner_m2(img, 1.2 * scale) for img in r_band]
    assert m2[0] > 0.02 and m2[0] > 4 * m2[1], m2
    assert r_band[0].sum() == pytest.approx(r_band[1].sum(), rel=0.02)
    comp = with_oval.component_fluxes_r()
    assert comp["oval"] == pytest.approx(0.2 * with_oval.flux_r)
    assert sum(comp.values()) == pytest.approx(with_oval.flux_r)
    assert with_oval.truth_row()["true_oval_strength"] == 0.2


def test_ovals_are_common_in_disks_barred_or_not_and_bad_ones_are_refused():
    from morphtransfer.simulate.population import OVAL_FRACTION

    disks = [g for g in (draw_galaxy(5, i) for i in range(600)) if g.disk]
    has = np.array([g.oval_strength > 0 for g in disks])
    barred = np.array([g.bar for g in disks])
    assert OVAL_FRACTION == 0.8
    assert 0.7 < has.mean() < 0.9
    assert 0.6 < has[barred].mean() and 0.6 < has[~barred].mean()
    # bulge + bar + oval leave the disk at least 15% of the light
    assert min(g.component_fluxes_r()["disk"] + g.component_fluxes_r()["knots"]
               for g in disks) >= 0.15 * min(g.flux_r for g in disks) * 0.999
    bad = dataclasses.replace(disks[0], oval_strength=0.3, oval_hlr_arcsec=0.0)
    with pytest.raises(InputError, match=f"galaxy {disks[0].id}: oval half-light radius"):
        bad.validate()


def _circular_apertures(obj, scale=0.05, n=1024):
    """(Petrosian flux fraction, R50, R90) measured on a GalSim image in circular apertures, as
    the SDSS pipeline does: ratio of the surface brightness in the annulus 0.8-1.25 r to the
    mean inside r falls to 0.2 at the Petrosian radius; flux within twice it."""
    im = obj.drawImage(nx=n, ny=n, scale=scale, method="no_pixel").array
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * scale
    rr = np.hypot(xx, yy).ravel()
    order = np.argsort(rr)
    rr, enc = rr[order], np.cumsum(im.ravel()[order])
    r = np.geomspace(20 * scale, 0.7 * rr.max(), 300)
    inner = np.interp(r, rr, enc)
    annulus = np.interp(1.25 * r, rr, enc) - np.interp(0.8 * r, rr, enc)
    ratio = (annulus / (np.pi * (1.25**2 - 0.8**2) * r**2)) / (inner / (np.pi * r**2))
    r_p = r[np.argmax(ratio < 0.2)]
    f_p = np.interp(2 * r_p, rr, enc)
    return f_p / enc[-1], np.interp(0.5 * f_p, enc, rr), np.interp(0.9 * f_p, enc, rr)


@pytest.mark.parametrize("cos_i,bt", [(1.0, 0.0), (0.34, 0.0), (0.1, 0.0), (0.5, 0.3)])
def test_petrosian_radii_are_those_of_circular_apertures_on_the_projected_galaxy(cos_i, bt):
    """Version 9: an inclined disk (and its sheared bulge) gets the Petrosian R50 / R90 that
    circular apertures measure on its GalSim image, as the SDSS pipeline measures them, not the
    face-on profile's."""
    import math

    import galsim

    from morphtransfer.simulate.population import disk_axis_ratio, petrosian_quantities

    h_over_r = 0.13
    disk = galsim.InclinedExponential(inclination=math.acos(cos_i) * galsim.radians,
                                      half_light_radius=2.0, scale_h_over_r=h_over_r)
    obj = disk.withFlux(1.0 - bt)
    comps = [(1.0 - bt, 1.0, 2.0, 1.0, disk_axis_ratio(cos_i, h_over_r))]
    if bt:
        q_b = math.sqrt(cos_i**2 + 0.75**2 * (1 - cos_i**2))
        obj = obj + galsim.Sersic(n=4, half_light_radius=0.6, flux=bt).shear(q=q_b, beta=0 * galsim.degrees)
        comps.append((bt, 4.0, 0.6, 1 / math.sqrt(q_b), math.sqrt(q_b)))
    f_p, r50, r90 = _circular_apertures(obj)
    m_f, m_r50, m_r90 = petrosian_quantities(comps)
    assert m_f == pytest.approx(f_p, abs=0.01)
    assert m_r50 == pytest.approx(r50, rel=0.03)
    assert m_r90 == pytest.approx(r90, rel=0.03)
    face_on = petrosian_quantities([(1.0 - bt, 1.0, 2.0)] + ([(bt, 4.0, 0.6)] if bt else []))
    if cos_i < 0.4:  # an inclined disk's light falls inside a circle sooner than a face-on one's
        assert m_r90 < 0.76 * face_on[2]
