"""Does the simulation look right? Label-rate summary next to the study's numbers, a Figure 1-style
gallery (the same galaxies, SDSS left, DES right) and a comparison of the simulated SDSS vote
fractions with a real Galaxy Zoo 2 table. Every figure is written with the table it shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.data.store import Store
from morphtransfer.tasks import robust_labels

# The study's robust-label rates of its DES sample (Dominguez Sanchez et al. 2019, sect. 2):
# about one third of the robust Q1 galaxies are disks/featured, ~13% of all galaxies are robust
# edge-on, ~2% robust barred. Since simulator version 8 the volunteers' bars follow the real GZ2
# Stripe 82 votes instead (4.4% robust barred; simulate/volunteers.py), so that row stands ~2x
# above the study's.
STUDY_RATES = {
    "q1_disk_of_robust": 1 / 3,
    "q2_edge_on_of_all": 0.13,
    "q3_bar_of_all": 0.02,
}
RATE_TITLES = {
    "q1_disk_of_robust": "Q1 disks / robust Q1",
    "q2_edge_on_of_all": "Q2 robust edge-on / all",
    "q3_bar_of_all": "Q3 robust barred / all",
}

# GZ2 (Willett et al. 2013) column names of the three questions, and the simulated equivalents.
GZ2_COLUMNS = {
    "Q1 featured fraction": (
        "t01_smooth_or_features_a02_features_or_disk_fraction",
        ["t01_smooth_or_features_a01_smooth_count", "t01_smooth_or_features_a02_features_or_disk_count",
         "t01_smooth_or_features_a03_star_or_artifact_count"],
        "smooth_or_featured_featured_or_disk_fraction",
        "smooth_or_featured_total_votes",
    ),
    "Q2 edge-on fraction": (
        "t02_edgeon_a04_yes_fraction",
        ["t02_edgeon_a04_yes_count", "t02_edgeon_a05_no_count"],
        "disk_edge_on_yes_fraction",
        "disk_edge_on_total_votes",
    ),
    "Q3 bar fraction": (
        "t03_bar_a06_bar_fraction",
        ["t03_bar_a06_bar_count", "t03_bar_a07_no_bar_count"],
        "bar_yes_fraction",
        "bar_total_votes",
    ),
}
DEFAULT_GZ2_TABLE = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "gz2_stripe82" / "table5.csv.gz"
MIN_VOTES = 5  # the robust-label rule's vote minimum, also used to select comparable fractions


def label_rates(catalog: pd.DataFrame) -> dict[str, float]:
    """Robust-label rates of a catalogue in the study's terms, plus the true rates."""
    q1 = robust_labels(catalog, "Q1")
    q2 = robust_labels(catalog, "Q2")
    q3 = robust_labels(catalog, "Q3")
    n = max(len(catalog), 1)
    out = {
        "n": len(catalog),
        "q1_disk_of_robust": float((q1 == 1).sum() / max((q1 >= 0).sum(), 1)),
        "q1_robust_of_all": float((q1 >= 0).sum() / n),
        "q2_edge_on_of_all": float((q2 == 1).sum() / n),
        "q3_bar_of_all": float((q3 == 1).sum() / n),
    }
    if "true_disk" in catalog.columns:
        out.update(
            {
                "true_disk_of_all": float(catalog["true_disk"].mean()),
                "true_edge_on_of_all": float(catalog["true_edge_on"].mean()),
                "true_bar_of_all": float(catalog["true_bar"].mean()),
            }
        )
    return out


def summary_table(catalogs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per rate: the study's value and each survey's."""
    rates = {s: label_rates(c) for s, c in catalogs.items()}
    rows = []
    for key, title in RATE_TITLES.items():
        row = {"rate": title, "study (DES)": STUDY_RATES[key]}
        for s, r in rates.items():
            row[s] = r[key]
        rows.append(row)
    for key, title in [
        ("q1_robust_of_all", "Q1 robust / all"),
        ("true_disk_of_all", "true disks / all"),
        ("true_edge_on_of_all", "true edge-on / all"),
        ("true_bar_of_all", "true barred / all"),
    ]:
        row = {"rate": title, "study (DES)": np.nan}
        for s, r in rates.items():
            row[s] = r.get(key, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _rgb(img: np.ndarray) -> np.ndarray:
    """(g, r, i) per-band-normalised image -> RGB (i, r, g) with an asinh stretch."""
    x = np.clip(img[::-1].transpose(1, 2, 0), 0, None)
    soft = 0.02  # asinh softening as a fraction of the band maximum: shows the outer disk
    return np.clip(np.arcsinh(x / soft) / np.arcsinh(1 / soft), 0, 1)


def gallery_selection(
    catalogs: dict[str, pd.DataFrame], per_row: int = 4, seed: int = 0, label_survey: str = "des"
) -> pd.DataFrame:
    """Galaxies for the gallery: robust disks (face-on-ish), robust edge-on and robust barred in
    ``label_survey`` (true morphology agreeing), present in every survey; disks and bars with the
    most visible arms / bar, edge-on ones at random."""
    ref = catalogs[label_survey] if label_survey in catalogs else next(iter(catalogs.values()))
    common = set(ref["id"])
    for c in catalogs.values():
        common &= set(c["id"])
    cat = ref[ref["id"].isin(common)].reset_index(drop=True)
    q1, q2, q3 = (robust_labels(cat, t) for t in ("Q1", "Q2", "Q3"))
    groups = {
        "disk": (q1 == 1) & (q2 != 1) & cat["true_disk"] & ~cat["true_edge_on"],
        "edge-on": (q2 == 1) & cat["true_edge_on"],
        "barred": (q3 == 1) & cat["true_bar"],
    }
    # show the clearest examples: the highest visibility of the row's feature in label_survey
    rank = {"disk": "vis_arms", "edge-on": None, "barred": "vis_bar"}
    rng = np.random.default_rng(seed)
    rows = []
    for name, mask in groups.items():
        sub = cat.loc[mask.to_numpy()]
        key = rank[name]
        if key is not None and key in sub.columns:
            ids = sub.sort_values(key, ascending=False)["id"].to_numpy()[:per_row]
        else:
            ids = sub["id"].to_numpy()
            if len(ids) > per_row:
                ids = rng.choice(ids, per_row, replace=False)
        rows += [{"row": name, "id": i} for i in sorted(ids)]
    return pd.DataFrame(rows, columns=["row", "id"])


def make_gallery(stores: dict[str, Store], path: str | os.PathLike, per_row: int = 4) -> pd.DataFrame:
    """Figure 1 style: rows disks / edge-on / barred; each galaxy as an SDSS | DES pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = {s: st.catalog for s, st in stores.items()}
    sel = gallery_selection(cats, per_row=per_row)
    names = list(stores)
    n_rows = 3
    fig, axes = plt.subplots(
        n_rows, per_row * len(names), figsize=(1.6 * per_row * len(names), 1.75 * n_rows + 0.4),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    for r, group in enumerate(["disk", "edge-on", "barred"]):
        ids = sel.loc[sel["row"] == group, "id"].tolist()
        axes[r, 0].set_ylabel(group, fontsize=11)
        for k, gid in enumerate(ids):
            for j, s in enumerate(names):
                cat = cats[s]
                idx = cat.loc[cat["id"] == gid, "image_index"].to_numpy()
                ax = axes[r, k * len(names) + j]
                ax.imshow(_rgb(stores[s].read_images(idx)[0]), origin="lower")
                if r == 0 or k == 0:
                    ax.set_title(s.upper(), fontsize=8)
                ax.text(2, 3, gid[-6:], color="w", fontsize=6)
        if not ids:
            axes[r, 0].text(0.5, 0.5, f"no robust {group}\ngalaxy", ha="center", va="center",
                            transform=axes[r, 0].transAxes, fontsize=7)
    fig.suptitle("The same simulated galaxies: " + " | ".join(s.upper() for s in names)
                 + " (rows: robust disks, edge-on, barred in DES)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    sel.to_csv(Path(path).with_suffix(".csv"), index=False)
    return sel


def compare_with_gz2(
    sim_catalog: pd.DataFrame, gz2_table: str | os.PathLike, out_dir: str | os.PathLike
) -> dict:
    """KS distance and histogram overlap of the simulated vote fractions against the real GZ2
    ones, per question, on galaxies with >= 5 votes in that question; plus robust rates of both."""
    from scipy.stats import ks_2samp

    gz = pd.read_csv(gz2_table)
    bins = np.linspace(0, 1, 11)
    result: dict = {"gz2_table": str(gz2_table), "n_gz2": len(gz), "n_sim": len(sim_catalog),
                    "min_votes": MIN_VOTES, "questions": {}}
    hists = {}
    for title, (gz_frac, gz_counts, sim_frac, sim_total) in GZ2_COLUMNS.items():
        gz_tot = gz[gz_counts].sum(axis=1)
        a = gz.loc[gz_tot >= MIN_VOTES, gz_frac].dropna().to_numpy()
        b = sim_catalog.loc[sim_catalog[sim_total] >= MIN_VOTES, sim_frac].dropna().to_numpy()
        if len(a) == 0 or len(b) == 0:
            continue
        ha = np.histogram(a, bins)[0] / len(a)
        hb = np.histogram(b, bins)[0] / len(b)
        ks = ks_2samp(a, b)
        result["questions"][title] = {
            "n_gz2": int(len(a)),
            "n_sim": int(len(b)),
            "ks_distance": float(ks.statistic),
            "histogram_overlap": float(np.minimum(ha, hb).sum()),
            "median_gz2": float(np.median(a)),
            "median_sim": float(np.median(b)),
            "robust_pos_gz2": float((a > 0.7).mean()),
            "robust_pos_sim": float((b > 0.7).mean()),
        }
        hists[title] = (ha, hb)
    # robust rates in the study's terms (fraction of all galaxies)
    gz_t01 = gz[GZ2_COLUMNS["Q1 featured fraction"][1]].sum(axis=1)
    gz_t02 = gz[GZ2_COLUMNS["Q2 edge-on fraction"][1]].sum(axis=1)
    gz_t03 = gz[GZ2_COLUMNS["Q3 bar fraction"][1]].sum(axis=1)
    feat = gz["t01_smooth_or_features_a02_features_or_disk_fraction"]
    smooth = gz["t01_smooth_or_features_a01_smooth_fraction"]
    ok1 = gz_t01 >= MIN_VOTES
    result["robust_rates_gz2"] = {
        "q1_disk_of_robust": float(((feat > 0.7) & ok1).sum() / max((((feat > 0.7) | (smooth > 0.7)) & ok1).sum(), 1)),
        "q2_edge_on_of_all": float(((gz["t02_edgeon_a04_yes_fraction"] > 0.7) & (gz_t02 >= MIN_VOTES)).mean()),
        "q3_bar_of_all": float(((gz["t03_bar_a06_bar_fraction"] > 0.7) & (gz_t03 >= MIN_VOTES)).mean()),
    }
    result["robust_rates_sim"] = {k: label_rates(sim_catalog)[k] for k in STUDY_RATES}
    out_dir = Path(out_dir)
    (out_dir / "vote_comparison.json").write_text(json.dumps(result, indent=2))
    _plot_comparison(hists, bins, result, out_dir / "vote_comparison.png")
    return result


def _plot_comparison(hists, bins, result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(hists) + 1, figsize=(4 * (len(hists) + 1), 3.4))
    centres = 0.5 * (bins[1:] + bins[:-1])
    for ax, (title, (ha, hb)) in zip(axes, hists.items()):
        ax.step(centres, ha, where="mid", label="GZ2 Stripe 82 (real)")
        ax.step(centres, hb, where="mid", label="simulated SDSS")
        q = result["questions"][title]
        ax.set_title(f"{title}\nKS {q['ks_distance']:.2f}, overlap {q['histogram_overlap']:.2f}",
                     fontsize=9)
        ax.set_xlabel("vote fraction"), ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.axis("off")
    lines = [f"{'question':22s} {'n_gz2':>6s} {'n_sim':>6s} {'KS':>5s} {'ovl':>5s}"]
    for title, q in result["questions"].items():
        lines.append(f"{title:22s} {q['n_gz2']:6d} {q['n_sim']:6d} {q['ks_distance']:5.2f} "
                     f"{q['histogram_overlap']:5.2f}")
    lines.append("")
    lines.append(f"{'robust rate':22s} {'GZ2':>6s} {'sim':>6s}")
    for k, title in RATE_TITLES.items():
        lines.append(f"{title:22s} {result['robust_rates_gz2'][k]:6.3f} "
                     f"{result['robust_rates_sim'][k]:6.3f}")
    ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=7, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result, gz2_table: str | os.PathLike | None = None) -> None:
    """Summary (``summary.json``/``summary.csv``), gallery and the GZ2 comparison of a run."""
    out = Path(result.out)
    stores = {s: Store(p) for s, p in result.stores.items()}
    cats = {s: st.catalog for s, st in stores.items()}
    table = summary_table(cats)
    result.summary = table
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.json").write_text(
        json.dumps({s: label_rates(c) for s, c in cats.items()} | {"study": STUDY_RATES}, indent=2)
    )
    result.files["summary"] = out / "summary.csv"
    if len(stores) >= 1:
        make_gallery(stores, out / "gallery.png")
        result.files["gallery"] = out / "gallery.png"
    gz2 = Path(gz2_table) if gz2_table else DEFAULT_GZ2_TABLE.resolve()
    if "sdss" not in cats:
        result.notes.append("no SDSS store: the comparison with GZ2 was skipped")
    elif not gz2.exists():
        result.notes.append(f"GZ2 table {gz2} is absent: the vote comparison was skipped")
    else:
        compare_with_gz2(cats["sdss"], gz2, out)
        result.files["vote_comparison"] = out / "vote_comparison.json"
