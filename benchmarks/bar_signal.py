"""Where does the bar get lost? The volunteers' bar votes against what the model input shows.

For face-on simulated disks of the main sample (inclination below --max-inclination), each with its
own true bar flag, this scores how well the true bars can be told apart (ROC AUC against
``true_bar``):

- ``volunteers``: the simulated volunteers' bar vote fraction (what the robust labels come from;
  volunteers judge the survey's native pixels, as Galaxy Zoo's did at 424 x 424);
- ``m2_*``: a simple classifier of the image itself, a 5-fold cross-validated logistic regression on
  the m = 2 Fourier amplitude in 8 annuli and its phase against the outer disk (a bar is an inner
  m = 2 pattern whose angle differs from the disk's), on the r band after the study's preprocessing
  (crop 10 x R90, area average, / maximum), for each step of the image chain: the noise-free model
  at 3x the input resolution (``m2_noise_free_207px``), at the 69 x 69 input
  (``m2_noise_free``), with sky and galaxy noise (``m2_noisy_linear``), and the served product
  the CNN sees (``m2_served``: colour stretch, 8 bits, JPEG). The noise-free steps are the galaxy
alone; the noisy and served ones hold its field stars and galaxies too (simulator version 7).

The m = 2 classifier is a floor, not the best a CNN can do; the drop from one step to the next is
what it measures. Prints JSON; about 1 minute per 300 galaxies and survey on one core.

``--real`` instead compares the bars' imprint with real images (no real bar labels are needed):
the inner m = 2 amplitude (largest over the 1.5-4.5 pixel annuli) of disks that look face-on
(outer 8-11 pixel annulus amplitude < 0.2), in real SDSS SkyServer JPEGs of Galaxy Zoo 1 spirals
(../shared/data/sdss_gz1, classes 1 and 2) and in simulated SDSS disks with arms and inclination
below 60 deg served the same way (framed as GZ1's cutouts may be, 10.15 x the Petrosian radius,
see image_product_calibration.py); quartiles and 90th percentile, simulated also split by true bar.

    python benchmarks/bar_signal.py [--n 300] [--max-inclination 40] [--surveys sdss,des]
    python benchmarks/bar_signal.py --real [--n 600]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from morphtransfer.data.preprocess import preprocess_cutout
from morphtransfer.simulate.field import galaxy_field
from morphtransfer.simulate.pipeline import survey_stream, volunteer_counts
from morphtransfer.simulate.population import MAG_MAIN_SAMPLE_LIMIT, draw_galaxy, galaxy_rng
from morphtransfer.simulate.render import CUTOUT_R90, observe
from morphtransfer.simulate.volunteers import VolunteerModel
from morphtransfer.surveys import get_survey

EDGES = (0.0, 1.5, 2.5, 3.5, 4.5, 6.0, 8.0, 11.0, 15.0)  # annuli, in 69-pixel input pixels


def m2_features(img: np.ndarray, upsample: int = 1) -> list[float]:
    """m = 2 amplitude per annulus and its phase relative to the 8-11 pixel annulus (the disk)."""
    n = img.shape[-1]
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0
    r, th = np.hypot(x, y) / upsample, np.arctan2(y, x)
    a = img - np.median(np.concatenate([img[: 4 * upsample].ravel(), img[-4 * upsample:].ravel()]))
    amp, phase = [], []
    for lo, hi in zip(EDGES[:-1], EDGES[1:]):
        m = (r >= lo) & (r < hi)
        c2 = (a[m] * np.exp(-2j * th[m])).sum()
        amp.append(abs(c2) / (abs(a[m].sum()) + 1e-9))
        phase.append(np.angle(c2))
    ph = np.asarray(phase)
    return amp + list(np.abs(np.angle(np.exp(1j * (ph - ph[-2])))))


def cv_auc(features: list, truth: np.ndarray, seed: int) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    x = np.nan_to_num(np.asarray(features, dtype="float64"))
    p = cross_val_predict(clf, x, truth, cv=5, method="predict_proba")[:, 1]
    return round(float(roc_auc_score(truth, p)), 3)


def measure(survey_name: str, n: int, max_incl: float, seed: int) -> dict:
    sv = get_survey(survey_name)
    jr = sv.band_names.index("r") if "r" in sv.band_names else len(sv.band_names) // 2
    feats: dict[str, list] = {k: [] for k in ("noise_free_207px", "noise_free", "noisy_linear", "served")}
    truth, votes = [], []
    index, t0 = 0, time.time()
    while len(truth) < n:
        g = draw_galaxy(seed, index)
        index += 1
        if not g.disk or g.inclination_deg > max_incl or g.mag_r > MAG_MAIN_SAMPLE_LIMIT:
            continue
        # the same random streams as the simulated Store: these are the images and votes it holds
        obs = observe(g, sv, galaxy_rng(seed, index - 1, survey_stream(sv.name)), keep_stamps=True,
                      field=galaxy_field(seed, index - 1, g.r90_arcsec))
        counts = volunteer_counts(obs, sv, seed, index - 1, VolunteerModel())
        yes, no = int(counts["bar_yes_count"][0]), int(counts["bar_no_count"][0])
        votes.append(yes / (yes + no) if yes + no else 0.0)
        truth.append(int(g.bar))
        scale, r90 = obs.geometry.pixel_scale_arcsec, g.r90_arcsec

        def prep(x, size=69):
            return preprocess_cutout(x, scale, r90, size=size, crop_factor=CUTOUT_R90)[jr]

        feats["noise_free_207px"].append(m2_features(prep(obs.models, 207), upsample=3))
        feats["noise_free"].append(m2_features(prep(obs.models)))
        feats["noisy_linear"].append(m2_features(prep(obs.stamps)))
        feats["served"].append(m2_features(obs.images[jr]))
    t = np.asarray(truth)
    out = {
        "survey": sv.name,
        "n_galaxies": int(len(t)),
        "n_bars": int(t.sum()),
        "max_inclination_deg": max_incl,
        "auc_vs_true_bar": {"volunteers": round(float(roc_auc_score(t, votes)), 3)},
        "seconds": round(time.time() - t0, 1),
    }
    for k, f in feats.items():
        out["auc_vs_true_bar"][f"m2_{k}"] = cv_auc(f, t, seed)
    return out


def inner_outer(img: np.ndarray) -> tuple[float, float]:
    """(inner m = 2 amplitude: the largest over the 1.5-4.5 px annuli, outer: the 8-11 px one)."""
    amp = m2_features(img)[: len(EDGES) - 1]
    return max(amp[1:4]), amp[6]


def _quantiles(x) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(x, [25, 50, 75, 90])] if len(x) else []


def real_comparison(n: int, seed: int, outer_max: float = 0.2) -> dict:
    """Inner m = 2 amplitude of face-on-looking disks, real GZ1 spirals vs simulated SDSS disks."""
    import pandas as pd

    from image_product_calibration import REAL, gz1_frame_r90, real_input

    labels = REAL.parent / "labels.csv"
    if not labels.exists():
        return {"skipped": f"no real SDSS JPEGs at {REAL.parent}"}
    spirals = pd.read_csv(labels).query("gz1_class in (1, 2)").file[:n]
    real = [inner_outer(real_input(REAL.parent / f)[1]) for f in spirals]
    sv = get_survey("sdss")
    sim, bars, index = [], [], 0
    while len(sim) < len(real):
        g = draw_galaxy(seed, index)
        index += 1
        if (not g.disk or g.inclination_deg > 60 or g.n_arms == 0
                or g.mag_r > MAG_MAIN_SAMPLE_LIMIT):
            continue
        side = gz1_frame_r90(g)
        # the served SkyServer product, preprocessed as the real JPEGs (r: the middle channel)
        obs = observe(g, sv, galaxy_rng(seed, index - 1, survey_stream(sv.name)), cutout_r90=side,
                      field=galaxy_field(seed, index - 1, g.r90_arcsec, side))
        sim.append(inner_outer(obs.images[1]))
        bars.append(g.bar)
    r, s_, b = np.asarray(real), np.asarray(sim), np.asarray(bars)
    fr, fs = r[:, 1] < outer_max, s_[:, 1] < outer_max
    return {
        "statistic": "inner m=2 amplitude of disks with outer amplitude < %.2f: q25, q50, q75, q90"
                     % outer_max,
        "real_gz1_spirals": {"n": int(fr.sum()), "quantiles": _quantiles(r[fr, 0])},
        "simulated_sdss_disks": {"n": int(fs.sum()), "quantiles": _quantiles(s_[fs, 0])},
        "simulated_barred": {"n": int((fs & b).sum()), "quantiles": _quantiles(s_[fs & b, 0])},
        "simulated_unbarred": {"n": int((fs & ~b).sum()), "quantiles": _quantiles(s_[fs & ~b, 0])},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None,
                    help="face-on disks per survey (default 300; with --real, 600 real spirals)")
    ap.add_argument("--max-inclination", type=float, default=40.0)
    ap.add_argument("--surveys", default="sdss,des")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--real", action="store_true",
                    help="compare face-on disks' inner m = 2 with real SDSS GZ1 spirals")
    a = ap.parse_args(argv)
    if a.real:
        print(json.dumps(real_comparison(a.n or 600, a.seed)))
        return
    res = [measure(s.strip(), a.n or 300, a.max_inclination, a.seed) for s in a.surveys.split(",")]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
