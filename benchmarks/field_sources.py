"""How crowded are the cutouts? Other sources in the frame, real SkyServer JPEGs against the
simulated SDSS images.

A real cutout of ~10 x R90 holds more than its galaxy: neighbouring galaxies and stars (at SDSS
depth some 10^4 sources per square degree, a few per 50" frame). The simulator draws one galaxy
per cutout. This counts, in the r band of the model input (after the study's preprocessing),
the connected groups of >= 4 pixels above the frame's sky + 5 sigma (median / MAD of the outer
6-pixel rows) that do not hold the centre pixel and peak at >= 5% of the band's maximum above
the sky; a simulated image can only have such groups from noise, JPEG blocks or detached knots.
Ellipticals (GZ1 class 0) are counted apart, since a spiral's own knots can count.

    python benchmarks/field_sources.py [--n 1000]

Prints JSON: the fraction of cutouts with at least one other source and the mean number, real and
simulated. About 20 s for the default --n 1000.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
from scipy import ndimage

from image_product_calibration import REAL, frame_pixels, real_input  # benchmarks/, beside this
from morphtransfer.simulate.field import galaxy_field
from morphtransfer.simulate.pipeline import survey_stream
from morphtransfer.simulate.population import draw_galaxy, galaxy_rng
from morphtransfer.simulate.render import observe
from morphtransfer.surveys import get_survey


def other_sources(img: np.ndarray, n_sigma: float = 5.0, min_pixels: int = 4,
                  min_peak: float = 0.05) -> int:
    """Sources other than the centred galaxy in the r band of a (g, r, i, H, W) model input."""
    r = img[1]
    frame = frame_pixels(img[None])[0, 1]
    sky = np.median(frame)
    sigma = 1.4826 * np.median(np.abs(frame - sky)) + 1e-6
    labels, n = ndimage.label(r > sky + n_sigma * sigma)
    if n == 0:
        return 0
    ids = np.arange(1, n + 1)
    size = ndimage.sum_labels(np.ones_like(r), labels, ids)
    peak = np.asarray(ndimage.maximum(r, labels, ids))
    centre = labels[r.shape[0] // 2, r.shape[1] // 2]
    return int(((size >= min_pixels) & (peak - sky >= min_peak) & (ids != centre)).sum())


def _summary(counts) -> dict:
    c = np.asarray(counts)
    return {"n": int(len(c)), "frac_with_other_source": round(float((c > 0).mean()), 3),
            "mean_other_sources": round(float(c.mean()), 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="real JPEGs (and half as many simulated)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-field", action="store_true",
                    help="simulated galaxies without their field stars and galaxies (version 6)")
    a = ap.parse_args(argv)
    labels = REAL.parent / "labels.csv"
    if not labels.exists():
        print(json.dumps({"skipped": f"no real SDSS JPEGs at {REAL.parent}"}))
        return
    cat = pd.read_csv(labels)
    sv = get_survey("sdss")
    out = {}
    for name, rows, smooth in (("all", cat, None), ("ellipticals", cat.query("gz1_class == 0"), True)):
        real = [other_sources(real_input(REAL.parent / f)) for f in rows.file[: a.n]]
        sim, i = [], 0
        while len(sim) < max(len(real) // 2, 1):
            g = draw_galaxy(a.seed, i)
            i += 1
            if smooth and g.disk:
                continue
            fld = None if a.no_field else galaxy_field(a.seed, i - 1, g.r90_arcsec)
            obs = observe(g, sv, galaxy_rng(a.seed, i - 1, survey_stream(sv.name)), field=fld)
            sim.append(other_sources(obs.images))
        out[name] = {"real_skyserver": _summary(real), "simulated_sdss": _summary(sim)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
