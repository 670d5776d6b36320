"""Galaxy Zoo-like volunteers: vote counts that follow the decision tree and depend on what each
survey's image shows.

Every volunteer sees the same image. Whether a feature is noticed depends on its visibility in
that image (render.py: ``vis_arms``, ``vis_bar`` - a feature signal-to-noise including a contrast
floor - and ``vis_axis_ratio``, the apparent thinness), through a logistic curve in log visibility.
The same volunteer model serves every survey: SDSS and DES labels differ only because the images
differ (seeing, pixels, depth).

Volunteer noise has two levels:
- per image (shared by its volunteers): the impression an image makes scatters around its
  measured visibility (``perception_scatter`` in log visibility, ``shape_scatter`` in axis ratio),
  and the vote probability is overdispersed (beta-binomial, ``concentration``), as real GZ vote
  fractions are wider than binomial at fixed morphology (Willett et al. 2013, sect. 3);
- per volunteer: each vote is a Bernoulli draw with that probability.

Decision tree (Willett et al. 2013, Fig. 1): every volunteer answers T01 smooth / features or disk /
artifact; only those who answered "features or disk" are asked T02 edge-on; only those who then
answered "not edge-on" are asked T03 bar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from morphtransfer.errors import InputError
from morphtransfer.tasks import QUESTIONS


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class VolunteerModel:
    """Parameters of the volunteers (tuned so that the DES sample's robust-label rates land near
    the study's: ~1/3 of robust Q1 galaxies disks, ~13% robust edge-on; and the bars near the
    real GZ2 Stripe 82 votes: ~4.5% robust barred, ~24% of the robust galaxies on the path)."""

    p_artifact: float = 0.01  # clicks on "star or artifact" (GZ2 median ~1%)
    p_featured_base: float = 0.10  # volunteers who call any galaxy "features or disk"
    # T01: arms/clumps, bars and a thin shape make a galaxy "featured"
    arms_vis50: float = 3.2  # visibility at which half the volunteers notice the arms
    arms_width: float = 0.45  # logistic width in ln(visibility)
    # the bar thresholds rose x3 in simulator version 5, whose bars are ~1.8x stronger and ~1.4x
    # longer, to keep the robust-barred rate at the study's 0.020; this one (T01: a bar makes a
    # galaxy "featured") stays there, T03's bar_vis50 came back down in version 8 (below)
    bar_feature_vis50: float = 15.0
    bar_feature_width: float = 0.45
    thin_q50: float = 0.42  # apparent axis ratio at which half call the galaxy a (thin) disk
    thin_width: float = 0.05
    # T02: edge-on
    edge_q50: float = 0.44
    edge_width: float = 0.045
    edge_floor: float = 0.03  # "yes" from volunteers who answer at random
    # T03: bar. 5.0 since simulator version 8 (10.5 before): the DES volunteers, whose images
    # are about as deep as the Stripe 82 coadd, then call 24% of the robust galaxies on the bar
    # question's path barred and 4.6% of all galaxies robustly barred, where the real GZ2 Stripe
    # 82 coadd table has 24.7% and 4.4% (SDSS 21% and 4.6%; at 10.5 DES 14% and 2.7%, SDSS 9.6%
    # and 2.2%: `benchmarks/volunteer_calibration.py`, 12,000 galaxies). The study quotes ~2% of
    # its DES sample robustly barred; the real votes are what the volunteers are checked against
    bar_vis50: float = 5.0
    bar_width: float = 0.4
    bar_floor: float = 0.10  # GZ2 bar fractions rarely reach 0: some "yes" for any disk
    # noise
    perception_scatter: float = 0.25  # per image, in ln(visibility)
    shape_scatter: float = 0.025  # per image, in apparent axis ratio
    # beta-binomial concentration of the per-image vote probability; 10 reproduces the width of
    # the GZ2 Stripe 82 vote-fraction distributions (KS distance 0.04-0.2, summary.py)
    concentration: float = 10.0

    def as_dict(self) -> dict:
        return asdict(self)


def vote_probabilities(
    vis_arms, vis_bar, vis_axis_ratio, model: VolunteerModel, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Per-image answer probabilities: featured, artifact, edge_on (given featured), bar (given
    featured and not edge-on). With ``rng``, the per-image perception scatter is applied."""
    va = np.atleast_1d(np.asarray(vis_arms, dtype="float64"))
    vb = np.atleast_1d(np.asarray(vis_bar, dtype="float64"))
    q = np.atleast_1d(np.asarray(vis_axis_ratio, dtype="float64"))
    if (va < 0).any() or (vb < 0).any() or ((q < 0) | (q > 1)).any():
        raise InputError("visibilities must be >= 0 and axis ratios in [0, 1]")
    tiny = 1e-6
    la, lb = np.log(va + tiny), np.log(vb + tiny)
    if rng is not None:
        la = la + rng.normal(0, model.perception_scatter, la.shape)
        lb = lb + rng.normal(0, model.perception_scatter, lb.shape)
        q = q + rng.normal(0, model.shape_scatter, q.shape)
    m = model
    p_arms = _sigmoid((la - np.log(m.arms_vis50)) / m.arms_width)
    p_barf = _sigmoid((lb - np.log(m.bar_feature_vis50)) / m.bar_feature_width)
    p_thin = _sigmoid((m.thin_q50 - q) / m.thin_width)
    seen = 1 - (1 - p_arms) * (1 - p_barf) * (1 - p_thin)
    p_feat = m.p_featured_base + (1 - m.p_featured_base - m.p_artifact) * seen
    p_edge = m.edge_floor + (1 - 2 * m.edge_floor) * _sigmoid((m.edge_q50 - q) / m.edge_width)
    p_bar = m.bar_floor + (1 - 2 * m.bar_floor) * _sigmoid((lb - np.log(m.bar_vis50)) / m.bar_width)
    return {
        "featured": p_feat,
        "artifact": np.full_like(p_feat, m.p_artifact),
        "edge_on": p_edge,
        "bar": p_bar,
    }


def _overdispersed(rng, p, concentration):
    """A beta draw around p (the image's own vote probability)."""
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return rng.beta(p * concentration, (1 - p) * concentration)


def draw_votes(
    probs: dict[str, np.ndarray],
    n_votes,
    model: VolunteerModel,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Vote counts per answer following the decision tree; keys are the catalogue's count
    columns (``smooth_or_featured_smooth_count``, ...)."""
    n = np.atleast_1d(np.asarray(n_votes, dtype="int64"))
    if (n < 0).any():
        raise InputError(f"numbers of votes must be >= 0, got {n.min()}")
    k = model.concentration
    p_art = np.clip(probs["artifact"], 0, 1)
    p_feat = np.minimum(_overdispersed(rng, probs["featured"], k), 1 - p_art)
    p_smooth = np.clip(1 - p_feat - p_art, 0, 1)
    q1, q2, q3 = QUESTIONS["smooth_or_featured"], QUESTIONS["disk_edge_on"], QUESTIONS["bar"]
    counts = np.zeros((len(n), 3), dtype="int64")
    for j in range(len(n)):
        pv = np.clip([p_smooth[j], p_feat[j], p_art[j]], 0.0, 1.0)
        counts[j] = rng.multinomial(n[j], pv / pv.sum())
    featured = counts[:, 1]
    edge_yes = rng.binomial(featured, _overdispersed(rng, probs["edge_on"], k))
    edge_no = featured - edge_yes
    bar_yes = rng.binomial(edge_no, _overdispersed(rng, probs["bar"], k))
    return {
        q1.count_column("smooth"): counts[:, 0],
        q1.count_column("featured_or_disk"): featured,
        q1.count_column("artifact"): counts[:, 2],
        q2.count_column("yes"): edge_yes,
        q2.count_column("no"): edge_no,
        q3.count_column("yes"): bar_yes,
        q3.count_column("no"): edge_no - bar_yes,
    }


def draw_n_votes(votes_min: int, votes_max: int, rng: np.random.Generator) -> int:
    """Volunteers who classified the image: uniform in [votes_min, votes_max] (Survey table)."""
    if votes_min < 0 or votes_max < votes_min:
        raise InputError(f"bad vote range {votes_min}-{votes_max} in the Survey table")
    return int(rng.integers(votes_min, votes_max + 1))
