"""Calibrate / check a survey's simulated image product against real served cutouts.

Compares, after the study's preprocessing (crop 10 x R90, area average to 69 x 69, each band / its
maximum), simple statistics of real SDSS SkyServer JPEGs (../shared/data/sdss_gz1) with the same
statistics of simulated SDSS galaxies rendered through ``Survey.image_product`` (or a candidate
product given on the command line, for the calibration grid). Prints JSON.

    python benchmarks/image_product_calibration.py [--n 300] [--real 1000] [--fit] [--framing gz1]

Statistics per band (g, r, i): median background level and noise in the outer 6-pixel frame,
number of pixels above 0.95 (saturated core), above 0.5 and above 0.1 of the band's maximum, and
the mean pixel value.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from morphtransfer.data.preprocess import preprocess_cutout
from morphtransfer.data.readers import composite_channels, read_composite
from morphtransfer.simulate.field import galaxy_field
from morphtransfer.simulate.population import draw_galaxy, galaxy_rng, petrosian_radius
from morphtransfer.simulate.render import add_noise, observe, serve_survey
from morphtransfer.surveys import get_survey

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sdss_gz1" / "images"
STATS = ("bg_level", "bg_noise", "n_sat", "n_half", "n_tenth", "mean")


def frame_pixels(images: np.ndarray, width: int = 6) -> np.ndarray:
    """(n, bands, H, W) -> (n, bands, pixels) of the top and bottom ``width`` rows: the sky."""
    n, nb = images.shape[:2]
    return np.concatenate(
        [images[:, :, :width].reshape(n, nb, -1), images[:, :, -width:].reshape(n, nb, -1)], axis=2
    )


def image_stats(images: np.ndarray) -> dict[str, list[float]]:
    """(n, bands, 69, 69) preprocessed images -> per-band medians / means of the statistics."""
    frame = frame_pixels(images)
    out = {
        "bg_level": np.median(np.median(frame, axis=2), axis=0),
        "bg_noise": np.median(frame.std(axis=2), axis=0),
        "n_sat": (images > 0.95).sum(axis=(2, 3)).mean(0),
        "n_half": np.median((images > 0.5).sum(axis=(2, 3)), axis=0),
        "n_tenth": np.median((images > 0.1).sum(axis=(2, 3)), axis=0),
        "mean": np.median(images.mean(axis=(2, 3)), axis=0),
    }
    return {k: [round(float(x), 4) for x in v] for k, v in out.items()}


def real_input(path: Path) -> np.ndarray:
    """A real SkyServer JPEG as the model sees it: (g, r, i, 69, 69) after the preprocessing."""
    return preprocess_cutout(read_composite(path, composite_channels("sdss"), ("g", "r", "i")).data)


def real_stats(n: int) -> dict | None:
    files = sorted(REAL.glob("*.jpeg"))[:n]
    if not files:
        return None
    return image_stats(np.stack([real_input(f) for f in files]))


def petrosian_radius_arcsec(g) -> float:
    """The galaxy's Petrosian radius (ratio 0.2, the SDSS definition), from its components."""
    if not g.disk:
        return petrosian_radius([(1.0, g.sersic_n, g.sersic_hlr_arcsec)])
    comps = [(1 - g.bulge_to_total, 1.0, g.disk_hlr_arcsec)]
    if g.bulge_to_total > 0:
        comps.append((g.bulge_to_total, g.sersic_n, g.sersic_hlr_arcsec))
    return petrosian_radius(comps)


def gz1_frame_r90(g) -> float:
    """Side of a GZ1 cutout in units of the galaxy's R90, if its 423 pixels of 0.024 x R_P arcsec
    used the Petrosian radius R_P (10.15 x R_P; 7.7 x R90 in the median)."""
    return 423 * 0.024 * petrosian_radius_arcsec(g) / g.r90_arcsec


def simulated_models(n: int, seed: int = 7, framing: str = "r90", no_field: bool = False):
    """Noise-free SDSS stamps of n simulated galaxies with their field stars and galaxies (with
    their geometry and frame side in R90; ``no_field``: the galaxies alone, version 6).

    ``framing``: "r90", the study's crop of 10 x R90; "gz1", Galaxy Zoo 1's cutouts if their 423
    pixels of 0.024 x R_P arcsec used the Petrosian radius R_P (10.15 x R_P, 7.7 x R90 in the
    median): which of the two the real JPEGs have is not known here."""
    sv = get_survey("sdss")
    out = []
    for i in range(n):
        g = draw_galaxy(seed, i)
        side = 10.0 if framing == "r90" else gz1_frame_r90(g)
        fld = None if no_field else galaxy_field(seed, i, g.r90_arcsec, side)
        obs = observe(g, sv, galaxy_rng(seed, i, 1), keep_stamps=True, cutout_r90=side, field=fld)
        out.append((obs.scene, obs.geometry, g.r90_arcsec, side))
    return out


def simulated_stats(models, product, seed: int = 11) -> dict:
    """Statistics of the simulated SDSS galaxies served as ``product`` (None: linear fluxes)."""
    sv = get_survey("sdss")
    bands = sv.band_names
    rng = np.random.default_rng(seed)
    imgs = []
    for m, geom, r90, side in models:
        if product is None:
            served = add_noise(m, sv, bands, geom.binning, rng)
        else:
            served = serve_survey(m, sv, bands, geom.binning, rng, product)
        imgs.append(preprocess_cutout(served, geom.pixel_scale_arcsec, r90, crop_factor=side))
    return image_stats(np.stack(imgs))


def distance(sim: dict, real: dict) -> float:
    """Mean absolute log ratio over the statistics and bands (0 = identical)."""
    d = []
    for k in STATS:
        a, b = np.asarray(sim[k]) + 1e-3, np.asarray(real[k]) + 1e-3
        d.extend(np.abs(np.log(a / b)))
    return float(np.mean(d))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="simulated galaxies")
    ap.add_argument("--real", type=int, default=1000, help="real SkyServer JPEGs")
    ap.add_argument("--fit", action="store_true",
                    help="fit stretch, Q and the g and i band scales (Nelder-Mead, r scale 1)")
    ap.add_argument("--framing", choices=("r90", "gz1"), default="r90",
                    help="crop the simulated galaxies as the study does (10 x R90) or as GZ1 may "
                         "have (10.15 x the Petrosian radius)")
    ap.add_argument("--no-field", action="store_true",
                    help="simulated galaxies without their field stars and galaxies (version 6)")
    args = ap.parse_args(argv)
    real = real_stats(args.real)
    if real is None:
        print(json.dumps({"skipped": f"no real SDSS JPEGs at {REAL}"}))
        return 0
    models = simulated_models(args.n, framing=args.framing, no_field=args.no_field)
    product = get_survey("sdss").image_product
    result = {"real_sdss_skyserver": real, "framing": args.framing,
              "frame_side_r90_median": round(float(np.median([m[3] for m in models])), 2)}
    if args.fit:
        from scipy.optimize import minimize

        def objective(x):
            p = replace(product, stretch=float(np.exp(x[0])), Q=float(np.exp(x[1])),
                        band_scales=(float(np.exp(x[2])), 1.0, float(np.exp(x[3]))))
            d = distance(simulated_stats(models, p), real)
            print(json.dumps({"stretch": p.stretch, "Q": p.Q, "band_scales": p.band_scales,
                              "distance": round(d, 4)}), file=sys.stderr, flush=True)
            return d

        x0 = np.log([product.stretch, product.Q, product.band_scales[0], product.band_scales[2]])
        res = minimize(objective, x0, method="Nelder-Mead",
                       options={"maxfev": 80, "xatol": 0.05, "fatol": 0.005})
        best = np.exp(res.x)
        product = replace(product, stretch=round(float(best[0]), 3), Q=round(float(best[1]), 2),
                          band_scales=(round(float(best[2]), 3), 1.0, round(float(best[3]), 3)))
    sim = simulated_stats(models, product)
    result["simulated_sdss"] = sim
    result["distance"] = round(distance(sim, real), 4)
    linear = simulated_stats(models, None)
    result["simulated_sdss_linear_fluxes"] = linear
    result["distance_linear_fluxes"] = round(distance(linear, real), 4)
    result["product"] = {"kind": product.kind, "stretch": product.stretch, "Q": product.Q,
                         "band_scales": list(product.band_scales)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
