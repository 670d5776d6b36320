"""Catalogue adapters: published Galaxy Zoo tables -> one tidy table (the tasks.py convention).

Every adapter returns a DataFrame with

* ``id`` (str, the catalogue's own object id), ``file`` (image file name or relative path, or
  empty when the catalogue has no images), ``ra``, ``dec`` (deg, NaN when absent),
  ``r90_arcsec`` (Petrosian R90 when the catalogue has one, else NaN), ``source_catalog``;
* vote columns ``<question>_<answer>_count``, ``_fraction`` and ``<question>_total_votes`` for
  smooth_or_featured (smooth, featured_or_disk, artifact), disk_edge_on (yes, no), bar (yes, no).

The mapping from the published column names, as released:

=====================  =====================================================================
format                 mapping
=====================  =====================================================================
gz1                    Galaxy Zoo 1 classes (Lintott et al. 2008/2011), one class per galaxy:
                       ``objid, gz1_class, file``. Classes become *unanimous pseudo-votes* of
                       GZ1_PSEUDO_VOTES volunteers: 0 elliptical -> smooth; 1, 2 spiral
                       (clockwise / anticlockwise) -> featured_or_disk and edge-on "no";
                       3 edge-on -> featured_or_disk and edge-on "yes". Classes 4 (don't know)
                       and 5 (merger) carry no Q1/Q2 information and are dropped (counted in
                       ``catalog.attrs["dropped"]``). No bar question (Q3 has no labels).
                       No R90 column: the GZ1 SkyServer cutouts were requested at a pixel scale
                       proportional to each galaxy's Petrosian size (Lintott et al. 2008), so each
                       image already spans a fixed multiple of the galaxy (checked on 40 images:
                       the r-channel half-light radius is 36 px median, 31-50 px for 80 %, of
                       423 px) and ingest uses the whole image.
gz2                    Galaxy Zoo 2, Hart et al. 2016 (``dr7objid``) or Willett et al. 2013
                       (``objid``, e.g. the Stripe 82 table 5):
                       ``t01_smooth_or_features_a01_smooth`` -> smooth, ``..._a02_features_or_disk`` -> featured_or_disk,
                       ``..._a03_star_or_artifact`` -> artifact; ``t02_edgeon_a04_yes`` /
                       ``_a05_no``; ``t03_bar_a06_bar`` / ``_a07_no_bar``. Raw ``_count`` columns;
                       fractions recomputed from them by default (``fractions="counts"``). NB: in
                       the Stripe 82 table 5 the published ``_fraction`` disagrees with
                       count / total by more than its rounding for 9,148 of 19,761 galaxies in
                       T01 (e.g. 4 smooth / 8 features published as 0.295 / 0.705), while the
                       Hart et al. 2016 rows agree; ``fractions="published"`` or ``"debiased"``
                       use the table's own columns instead. Image
                       files from ``gz2_filename_mapping.csv`` (objid -> asset_id.jpg) when found
                       next to the catalogue or given.
gzdecals               GZ DECaLS volunteers (Walmsley et al. 2022), ``iauname`` id:
                       ``smooth-or-featured_{smooth,featured-or-disk,artifact}``,
                       ``disk-edge-on_{yes,no}``; bar: DR1/2 ``bar_{yes,no}``, DR5 ``bar_strong +
                       bar_weak`` -> yes and ``bar_no`` -> no. ``petro_th90`` -> r90_arcsec.
                       Files: ``png_loc`` when present, else ``<iauname>.png`` (found anywhere
                       under the image folder).
kaggle                 Kaggle Galaxy Zoo challenge ``training_solutions_rev1.csv``: Class1.1/1.2/1.3
                       (smooth, features/disk, star/artifact), Class2.1/2.2 (edge-on yes/no),
                       Class3.1/3.2 (bar yes/no). These are *cumulative* vote fractions (Class2.x
                       sums to Class1.2) without vote counts, so counts are pseudo-counts
                       ``round(assumed_votes x cumulative fraction)`` (assumed_votes = 40, the GZ2
                       typical number of classifications, Willett et al. 2013) and fractions are
                       the exact within-question ratios. Files ``<GalaxyID>.jpg``.
tidy                   Already in this convention (``id`` plus any of file/ra/dec/r90_arcsec and
                       ``_count`` columns); fractions and totals are filled from the counts.
=====================  =====================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES

from morphtransfer.errors import InputError
from morphtransfer.tasks import QUESTIONS, add_fractions

FORMATS = ("gz1", "gz2", "gzdecals", "kaggle", "tidy")
GZ1_PSEUDO_VOTES = 10  # >= the study's 5-vote minimum; a unanimous class -> fraction 1.0
KAGGLE_ASSUMED_VOTES = 40  # GZ2 typical classifications per galaxy (Willett et al. 2013)

BASE_COLUMNS = ["id", "file", "ra", "dec", "r90_arcsec", "source_catalog"]
ID_COLUMNS = ("id", "objid", "dr7objid", "iauname", "GalaxyID", "asset_id")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or Parquet catalogue; InputError names the file if not."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"catalogue {p} does not exist; check the --catalog path")
    name = p.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            return pd.read_parquet(p)
        if name.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
            sep = "\t" if name.endswith(".tsv") else ","
            cols = pd.read_csv(p, sep=sep, nrows=0).columns
            ids = [c for c in cols if c in ID_COLUMNS]
            # ids stay text exactly as written: 18-digit objids must not pass through float, and
            # an id spelled "nan" or "NA" is an id, not a missing value
            na = {c: sorted(STR_NA_VALUES) for c in cols if c not in ids}
            return pd.read_csv(p, sep=sep, low_memory=False, dtype={c: str for c in ids},
                               keep_default_na=False, na_values=na)
    except Exception as exc:
        raise InputError(f"cannot read catalogue {p}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"catalogue {p}: unknown table type; use CSV (.csv, .csv.gz) or Parquet")


def _require(df: pd.DataFrame, cols: list[str], path, fmt: str, hint: str = "") -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(
            f"catalogue {path} lacks column(s) {missing} needed by --format {fmt}"
            + (f"; {hint}" if hint else "")
            + f". Its columns start: {list(df.columns[:12])}. "
            "Check the --format or rename the columns."
        )


def _frame(ids, source: str, n: int) -> pd.DataFrame:
    out = pd.DataFrame({"id": pd.Series(ids).astype(str).to_numpy()})
    out["file"] = ""
    out["ra"] = np.nan
    out["dec"] = np.nan
    out["r90_arcsec"] = np.nan
    out["source_catalog"] = source
    return out


def _counts_to_tidy(out: pd.DataFrame, counts: dict[str, np.ndarray]) -> pd.DataFrame:
    for col, vals in counts.items():
        out[col] = np.asarray(vals, dtype="int64")
    return add_fractions(out)


# --- Galaxy Zoo 1 -----------------------------------------------------------------------------
GZ1_CLASSES = {
    0: "elliptical",
    1: "spiral_clockwise",
    2: "spiral_anticlockwise",
    3: "edge_on",
    4: "dont_know",
    5: "merger",
}


def gz1(path, drop_classes=(4, 5), pseudo_votes: int = GZ1_PSEUDO_VOTES) -> pd.DataFrame:
    """Galaxy Zoo 1 class table (objid, gz1_class[, file]) -> tidy unanimous pseudo-votes."""
    df = read_table(path)
    _require(df, ["objid", "gz1_class"], path, "gz1", "GZ1 labels are objid,gz1_class[,file]")
    cls = pd.to_numeric(df["gz1_class"], errors="coerce")
    bad = df.loc[~cls.isin(list(GZ1_CLASSES)), "objid"].astype(str).tolist()
    if bad:
        raise InputError(
            f"catalogue {path}: gz1_class must be one of {sorted(GZ1_CLASSES)}; objids {bad[:5]} "
            "have other values; fix or remove those rows"
        )
    keep = ~cls.isin(list(drop_classes))
    dropped = int((~keep).sum())
    df, cls = df[keep].reset_index(drop=True), cls[keep].to_numpy().astype(int)
    out = _frame(df["objid"], "gz1", len(df))
    if "file" in df.columns:
        out["file"] = df["file"].fillna("").astype(str).to_numpy()
    else:
        out["file"] = out["id"] + ".jpeg"
    for c in ("ra", "dec"):
        if c in df.columns:
            out[c] = pd.to_numeric(df[c], errors="coerce").to_numpy()
    out["gz1_class"] = cls
    v = int(pseudo_votes)
    smooth = cls == 0
    disk = np.isin(cls, [1, 2, 3])
    sf, de = QUESTIONS["smooth_or_featured"], QUESTIONS["disk_edge_on"]
    counts = {
        sf.count_column("smooth"): smooth * v,
        sf.count_column("featured_or_disk"): disk * v,
        sf.count_column("artifact"): np.zeros(len(cls), int),
        de.count_column("yes"): (cls == 3) * v,
        de.count_column("no"): np.isin(cls, [1, 2]) * v,
    }
    out = _counts_to_tidy(out, counts)
    out.attrs["dropped"] = dropped
    out.attrs["dropped_reason"] = f"GZ1 classes {list(drop_classes)} carry no Q1/Q2 label"
    return out


# --- Galaxy Zoo 2 (Hart et al. 2016; Willett et al. 2013) -----------------------------------
GZ2_MAP = {
    ("smooth_or_featured", "smooth"): "t01_smooth_or_features_a01_smooth",
    ("smooth_or_featured", "featured_or_disk"): "t01_smooth_or_features_a02_features_or_disk",
    ("smooth_or_featured", "artifact"): "t01_smooth_or_features_a03_star_or_artifact",
    ("disk_edge_on", "yes"): "t02_edgeon_a04_yes",
    ("disk_edge_on", "no"): "t02_edgeon_a05_no",
    ("bar", "yes"): "t03_bar_a06_bar",
    ("bar", "no"): "t03_bar_a07_no_bar",
}


def _find_sibling(path, name: str) -> Path | None:
    p = Path(path).parent / name
    return p if p.exists() else None


def gz2(path, filename_mapping=None, fractions: str = "counts") -> pd.DataFrame:
    """GZ2 vote table (Hart et al. 2016 or Willett et al. 2013 layout) -> tidy votes.

    fractions: "counts" (count / votes cast in the question, the tasks.py convention),
    "published" (the table's own ``_fraction`` columns) or "debiased" (its ``_debiased`` ones).
    """
    if fractions not in ("counts", "published", "debiased"):
        raise InputError(f"gz2 fractions={fractions!r}: use counts, published or debiased")
    df = read_table(path)
    id_col = "dr7objid" if "dr7objid" in df.columns else "objid"
    _require(
        df,
        [id_col] + [f"{v}_count" for v in GZ2_MAP.values()],
        path,
        "gz2",
        "expected the published GZ2 columns such as t01_smooth_or_features_a01_smooth_count",
    )
    out = _frame(df[id_col], "gz2", len(df))
    for c in ("ra", "dec"):
        if c in df.columns:
            out[c] = pd.to_numeric(df[c], errors="coerce").to_numpy()
    for extra in ("gz2_class", "sample"):
        if extra in df.columns:
            out[extra] = df[extra].astype(str).to_numpy()
    counts = {
        QUESTIONS[q].count_column(a): pd.to_numeric(df[f"{src}_count"], errors="coerce")
        .fillna(0)
        .to_numpy()
        for (q, a), src in GZ2_MAP.items()
    }
    out = _counts_to_tidy(out, counts)
    if fractions != "counts":
        suffix = "_fraction" if fractions == "published" else "_debiased"
        _require(df, [f"{v}{suffix}" for v in GZ2_MAP.values()], path, f"gz2 ({fractions})")
        for (q, a), src in GZ2_MAP.items():
            out[QUESTIONS[q].fraction_column(a)] = pd.to_numeric(
                df[f"{src}{suffix}"], errors="coerce"
            ).to_numpy()
    mapping = filename_mapping or _find_sibling(path, "gz2_filename_mapping.csv")
    if mapping is not None:
        m = read_table(mapping)
        _require(m, ["objid", "asset_id"], mapping, "gz2 filename mapping")
        lut = dict(zip(m["objid"].astype(str), m["asset_id"].astype(str)))
        out["file"] = [f"{lut[i]}.jpg" if i in lut else "" for i in out["id"]]
    return out


# --- GZ DECaLS (Walmsley et al. 2022) -------------------------------------------------------
def gzdecals(path) -> pd.DataFrame:
    """GZ DECaLS volunteer table (gz_decals_volunteers_*.csv) -> tidy votes."""
    df = read_table(path)
    if "smooth-or-featured_smooth" not in df.columns and any(
        c.endswith("_concentration") for c in df.columns
    ):
        raise InputError(
            f"catalogue {path} holds automated (Zoobot) posteriors, not volunteer votes; use the "
            "volunteer table gz_decals_volunteers_*.csv for robust labels"
        )
    need = [
        "iauname",
        "smooth-or-featured_smooth",
        "smooth-or-featured_featured-or-disk",
        "smooth-or-featured_artifact",
        "disk-edge-on_yes",
        "disk-edge-on_no",
        "bar_no",
    ]
    _require(df, need, path, "gzdecals", "expected the GZ DECaLS volunteer columns")
    out = _frame(df["iauname"], "gzdecals", len(df))
    for c in ("ra", "dec", "redshift"):
        if c in df.columns:
            out[c] = pd.to_numeric(df[c], errors="coerce").to_numpy()
    if "petro_th90" in df.columns:
        out["r90_arcsec"] = pd.to_numeric(df["petro_th90"], errors="coerce").to_numpy()
    if "png_loc" in df.columns:
        out["file"] = df["png_loc"].fillna("").astype(str).to_numpy()
    else:
        out["file"] = out["id"] + ".png"

    def col(name):
        return pd.to_numeric(df[name], errors="coerce").fillna(0).to_numpy()

    if "bar_yes" in df.columns:
        bar_yes = col("bar_yes")
    elif "bar_strong" in df.columns and "bar_weak" in df.columns:
        bar_yes = col("bar_strong") + col("bar_weak")  # DR5 asked strong/weak/no
    else:
        raise InputError(f"catalogue {path}: no bar_yes nor bar_strong/bar_weak columns")
    counts = {
        "smooth_or_featured_smooth_count": col("smooth-or-featured_smooth"),
        "smooth_or_featured_featured_or_disk_count": col("smooth-or-featured_featured-or-disk"),
        "smooth_or_featured_artifact_count": col("smooth-or-featured_artifact"),
        "disk_edge_on_yes_count": col("disk-edge-on_yes"),
        "disk_edge_on_no_count": col("disk-edge-on_no"),
        "bar_yes_count": bar_yes,
        "bar_no_count": col("bar_no"),
    }
    return _counts_to_tidy(out, counts)


# --- Kaggle Galaxy Zoo challenge ------------------------------------------------------------
KAGGLE_MAP = {
    "smooth_or_featured": {
        "smooth": "Class1.1",
        "featured_or_disk": "Class1.2",
        "artifact": "Class1.3",
    },
    "disk_edge_on": {"yes": "Class2.1", "no": "Class2.2"},
    "bar": {"yes": "Class3.1", "no": "Class3.2"},
}


def kaggle(path, assumed_votes: int = KAGGLE_ASSUMED_VOTES) -> pd.DataFrame:
    """Kaggle challenge solutions (cumulative fractions) -> tidy pseudo-counts and fractions."""
    df = read_table(path)
    cols = [c for m in KAGGLE_MAP.values() for c in m.values()]
    _require(df, ["GalaxyID"] + cols, path, "kaggle", "expected training_solutions_rev1.csv")
    out = _frame(df["GalaxyID"], "kaggle", len(df))
    out["file"] = out["id"] + ".jpg"
    for q, answers in KAGGLE_MAP.items():
        qq = QUESTIONS[q]
        cum = {
            a: pd.to_numeric(df[c], errors="coerce").fillna(0).to_numpy()
            for a, c in answers.items()
        }
        reached = sum(cum.values())
        total = np.zeros(len(df), dtype="int64")
        for a in qq.answers:
            cnt = np.rint(assumed_votes * cum.get(a, np.zeros(len(df)))).astype("int64")
            out[qq.count_column(a)] = cnt
            total += cnt
        out[qq.total_column] = total
        with np.errstate(invalid="ignore", divide="ignore"):
            for a in qq.answers:
                out[qq.fraction_column(a)] = np.where(
                    reached > 0, cum.get(a, 0.0) / np.where(reached > 0, reached, 1), np.nan
                )
    return out


# --- already tidy -----------------------------------------------------------------------------
def tidy(path) -> pd.DataFrame:
    """A table already in the convention (id, optional file/ra/dec/r90_arcsec, _count columns)."""
    df = read_table(path)
    _require(df, ["id"], path, "tidy", "a tidy catalogue needs at least an 'id' column")
    out = df.copy()
    out["id"] = out["id"].astype(str)
    for c in BASE_COLUMNS:
        if c not in out.columns:
            out[c] = "" if c == "file" else ("tidy" if c == "source_catalog" else np.nan)
    out["file"] = out["file"].fillna("").astype(str)
    if any(c.endswith("_count") for c in out.columns):
        out = add_fractions(out)
    return out


ADAPTERS = {"gz1": gz1, "gz2": gz2, "gzdecals": gzdecals, "kaggle": kaggle, "tidy": tidy}


def load_catalog(path, format: str, **options) -> pd.DataFrame:
    """Read a catalogue in one of FORMATS into the tidy table (see the module docstring)."""
    fmt = (format or "").strip().lower()
    if fmt not in ADAPTERS:
        raise InputError(
            f"unknown catalogue format {format!r} for {path}; use one of {', '.join(FORMATS)}"
        )
    return ADAPTERS[fmt](path, **options)
