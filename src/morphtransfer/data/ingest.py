"""Ingest real cutouts and a Galaxy Zoo catalogue into a Store.

``ingest(images, catalog, format, out, survey="sdss")`` reads the catalogue with its adapter
(catalogs.py), finds each galaxy's image file under ``images``, reads it with an explicit band
order (readers.py), preprocesses it as the study does (preprocess.py: ~10 x R90 crop when both R90
and the pixel scale are known, else the whole image; 69 x 69 area average; per-band maximum) and
appends it to the Store in batches. Per-galaxy problems (missing or corrupt file, NaN/inf pixels,
an empty band, a duplicate id, a wrong shape) go to the Store's rejects table with the reason;
everything else goes on.

Resumable: galaxies already in the Store or already in its rejects table are skipped, so an
interrupted ingest re-run with the same arguments continues where it stopped; every batch that was
committed before the interruption stays (StoreWriter commits atomically). To retry the rejects
after fixing their files, delete ``rejects.csv``.

Speed: reading runs in a pool of ``workers`` processes, each taking a batch of files, with JPEGs
decoded at reduced DCT scale where that still leaves >= 2 x 69 pixels across the used part.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from morphtransfer.data.catalogs import load_catalog
from morphtransfer.data.preprocess import (
    CROP_FACTOR,
    IMAGE_SIZE,
    PreprocessError,
    preprocess_cutout,
)
from morphtransfer.data.readers import (
    IMAGE_SUFFIXES,
    ReadError,
    composite_channels,
    is_fits,
    read_composite,
    read_fits_cube,
)
from morphtransfer.data.store import Store, StoreWriter
from morphtransfer.errors import InputError
from morphtransfer.surveys import get_survey

BATCH_SIZE = 256  # galaxies per worker task and per Store append (= the Store's chunk length)
MIN_SIDE_PX = 16  # smaller images cannot carry a 69 x 69 galaxy: a wrong file, rejected


@dataclass(frozen=True)
class _Config:
    bands: tuple[str, ...]
    channel_bands: tuple[str, ...] | None
    file_bands: tuple[str, ...] | None
    size: int
    crop_factor: float
    jpeg_draft: bool


@dataclass
class IngestReport:
    """What one ingest call did; attached to the returned Store as ``store.ingest_report``."""

    n_ingested: int = 0
    n_rejected: int = 0
    n_skipped: int = 0  # already in the Store / rejects (resume)
    n_dropped_by_catalog: int = 0  # e.g. GZ1 classes without a Q1/Q2 label
    seconds: float = 0.0
    reject_reasons: dict = field(default_factory=dict)

    @property
    def rate_per_s(self) -> float:
        return self.n_ingested / self.seconds if self.seconds > 0 else float("nan")


def _process_one(
    path: str, r90: float, scale: float | None, cfg: _Config
) -> tuple[np.ndarray, str]:
    """Read + preprocess one galaxy; returns (image, crop_rule). Raises for per-galaxy problems."""
    if not os.path.exists(path):
        raise ReadError(f"{path}: file not found")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        scale = None
    have_crop = (
        scale is not None and r90 is not None and np.isfinite(r90) and r90 > 0
    )
    if is_fits(path):
        cut = read_fits_cube(
            path, bands=cfg.bands, file_bands=cfg.file_bands, pixel_scale_arcsec=scale
        )
        scale = cut.pixel_scale_arcsec
        have_crop = scale is not None and r90 is not None and np.isfinite(r90) and r90 > 0
    elif Path(path).suffix.lower() in IMAGE_SUFFIXES:
        crop_px = cfg.crop_factor * r90 / scale if have_crop else None
        cut = read_composite(
            path,
            cfg.channel_bands,
            bands=cfg.bands,
            min_size=2 * cfg.size if cfg.jpeg_draft else None,
            crop_px=crop_px,
        )
        if scale is not None:
            scale = scale / cut.reduction  # the decoded image's pixels are larger
    else:
        raise ReadError(f"{path}: unknown image type; use FITS, JPEG or PNG")
    h, w = cut.data.shape[-2:]
    if min(h, w) < MIN_SIDE_PX:
        raise PreprocessError(f"image is only {h} x {w} pixels (need >= {MIN_SIDE_PX})")
    if cut.data.shape[0] != len(cfg.bands):
        raise PreprocessError(f"image has {cut.data.shape[0]} bands, expected {len(cfg.bands)}")
    r90_used = r90 if have_crop else None
    img = preprocess_cutout(cut.data, scale, r90_used, cfg.size, cfg.crop_factor)
    if have_crop:
        side = cfg.crop_factor * r90 / scale
        rule = f"{cfg.crop_factor:g}xR90" if side <= min(h, w) + 1e-6 else "clipped_to_image"
    else:
        rule = "whole_image"
    return img, rule


def _worker_init() -> None:
    # One BLAS thread per worker: the pool already fills the cores, and OpenBLAS threads spinning
    # against each other made a 2-process ingest 25x slower (39/s instead of ~1000/s) here.
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:
        pass


def _process_batch(tasks: list[tuple[int, str, float, float | None]], cfg: _Config):
    """Worker: [(position, path, r90, pixel scale)] -> (ok positions, images, crops, rejects)."""
    ok, imgs, rules, rejects = [], [], [], []
    for pos, path, r90, scale in tasks:
        try:
            img, rule = _process_one(path, r90, scale, cfg)
        except (ReadError, PreprocessError, InputError, OSError, ValueError) as exc:
            rejects.append((pos, str(exc)))
            continue
        ok.append(pos)
        imgs.append(img)
        rules.append(rule)
    arr = np.stack(imgs) if imgs else np.zeros((0, len(cfg.bands), cfg.size, cfg.size), np.float32)
    return ok, arr, rules, rejects


class _FileIndex:
    """Find a catalogue's file under the image folder: as given, else by its name anywhere below."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, str] | None = None

    def _index(self) -> dict[str, str]:
        if self._by_name is None:
            self._by_name = {}
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    self._by_name.setdefault(f, os.path.join(dirpath, f))
        return self._by_name

    def resolve(self, name: str) -> str | None:
        if not name:
            return None
        p = self.root / name
        if p.exists():
            return str(p)
        if os.path.isabs(name) and os.path.exists(name):
            return name
        return self._index().get(os.path.basename(name))


def _reason_key(reason: str) -> str:
    low = reason.lower()
    for key in ("not found", "duplicate", "nan/inf", "all zero", "cannot decode", "truncated",
                "only", "bands", "no image file"):
        if key in low:
            return key
    return "other"


def ingest(
    images: str | os.PathLike,
    catalog: str | os.PathLike | pd.DataFrame,
    format: str,
    out: str | os.PathLike,
    survey: str = "sdss",
    bands: list[str] | tuple[str, ...] | None = None,
    workers: int = 2,
    channel_bands: list[str] | tuple[str, ...] | None = None,
    file_bands: list[str] | tuple[str, ...] | None = None,
    pixel_scale_arcsec: float | None = None,
    r90_column: str = "r90_arcsec",
    size: int = IMAGE_SIZE,
    crop_factor: float = CROP_FACTOR,
    batch_size: int = BATCH_SIZE,
    limit: int | None = None,
    catalog_options: dict | None = None,
    jpeg_draft: bool = True,
    progress: bool = True,
) -> Store:
    """Ingest cutouts + a Galaxy Zoo catalogue into the Store at ``out`` (created or resumed).

    images: folder of cutouts (catalogue ``file`` paths are relative to it; a file not at that
        path is looked up by its name anywhere below the folder).
    catalog: catalogue file (or an already tidy DataFrame); format: gz1|gz2|gzdecals|kaggle|tidy.
    survey: the survey the cutouts come from (Store metadata; composites' colour scheme).
    bands: output band order (default: the survey's bands, e.g. g, r, i for SDSS).
    channel_bands: for JPEG/PNG, the band in R, G, B (default: the survey's cutout-service
        convention, readers.COMPOSITE_CHANNELS; SDSS SkyServer = i, r, g).
    file_bands: for FITS cubes whose header does not name the bands, the bands in file order.
    pixel_scale_arcsec: arcsec per pixel of the stored images, for the 10 x R90 crop of JPEG/PNG
        cutouts; else a ``pixel_scale_arcsec`` catalogue column (written by ``download``) gives it
        per galaxy; FITS take it from their WCS. Unknown -> the whole image is used.
    r90_column: catalogue column with R90 in arcsec (adapters put petro_th90 there).
    limit: ingest at most this many catalogue rows (quick checks).

    Returns the Store; ``store.ingest_report`` (IngestReport) says how many galaxies were
    ingested, rejected (and why), skipped on resume and dropped by the catalogue adapter.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from morphtransfer.progress import Progress

    t0 = time.perf_counter()
    images_dir = Path(images)
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist; check --images")
    surv = get_survey(survey)
    bands = tuple(bands) if bands else surv.band_names
    cb = tuple(channel_bands) if channel_bands else None
    if cb is None:
        try:
            cb = composite_channels(surv.name)
        except InputError:
            cb = None  # only an error if a JPEG/PNG turns up (checked below)
    cfg = _Config(
        bands=bands,
        channel_bands=cb,
        file_bands=tuple(file_bands) if file_bands else None,
        size=size,
        crop_factor=crop_factor,
        jpeg_draft=jpeg_draft,
    )
    if isinstance(catalog, pd.DataFrame):
        cat = catalog.copy()
        if "id" not in cat.columns:
            raise InputError("the catalogue DataFrame needs an 'id' column")
        cat_name = "<DataFrame>"
    else:
        cat = load_catalog(catalog, format, **(catalog_options or {}))
        cat_name = str(catalog)
    n_dropped = int(cat.attrs.get("dropped", 0))
    cat = cat.reset_index(drop=True)
    cat["id"] = cat["id"].astype(str)
    if "file" not in cat.columns:
        cat["file"] = ""
    cat["file"] = cat["file"].fillna("").astype(str)
    if limit is not None:
        cat = cat.iloc[: int(limit)].reset_index(drop=True)
    r90 = (
        pd.to_numeric(cat[r90_column], errors="coerce").to_numpy(dtype=float)
        if r90_column in cat.columns
        else np.full(len(cat), np.nan)
    )
    if pixel_scale_arcsec is not None:
        scales = np.full(len(cat), float(pixel_scale_arcsec))
    elif "pixel_scale_arcsec" in cat.columns:
        scales = pd.to_numeric(cat["pixel_scale_arcsec"], errors="coerce").to_numpy(dtype=float)
    else:
        scales = np.full(len(cat), np.nan)
    needs_channels = cb is None and cat["file"].str.lower().str.endswith(
        tuple(IMAGE_SUFFIXES)
    ).any()
    if needs_channels:
        composite_channels(surv.name, None)  # raises the InputError naming the fix

    meta = {
        "ingest": {
            "catalog": cat_name,
            "format": format,
            "images": str(images_dir),
            "channel_bands": list(cb) if cb else None,
            "pixel_scale_arcsec": pixel_scale_arcsec,
            "crop": f"{crop_factor:g} x R90 when R90 and pixel scale are known, else whole image",
            "resample": f"area average to {size}x{size}",
            "normalisation": "each band / its own maximum",
        }
    }
    writer = StoreWriter(out, survey=surv.name, bands=list(bands), image_size=size, extra_meta=meta)
    done_ids = writer.existing_ids
    old_rejects = writer.store().rejects()
    done_ids |= set(old_rejects["id"].astype(str)) if len(old_rejects) else set()

    result = IngestReport(n_dropped_by_catalog=n_dropped)
    reasons: dict[str, int] = {}

    def add_rejects(records: list[dict]) -> None:
        writer.reject(records)
        result.n_rejected += len(records)
        for r in records:
            k = _reason_key(r["reason"])
            reasons[k] = reasons.get(k, 0) + 1

    # duplicates within the catalogue: the first one is ingested, the rest rejected
    dup = cat["id"].duplicated(keep="first").to_numpy()
    pending_rejects = [
        {"id": cat.at[i, "id"], "file": cat.at[i, "file"],
         "reason": f"duplicate id {cat.at[i, 'id']} in the catalogue (first row kept)"}
        for i in np.nonzero(dup)[0]
        if cat.at[i, "id"] not in writer.existing_ids
    ]
    skip = cat["id"].isin(done_ids).to_numpy() & ~dup
    result.n_skipped = int(skip.sum())
    todo_mask = ~dup & ~skip
    index = _FileIndex(images_dir)
    tasks: list[tuple[int, str, float, float | None]] = []
    for i in np.nonzero(todo_mask)[0]:
        path = index.resolve(cat.at[i, "file"])
        if path is None:
            reason = (
                "no image file in the catalogue" if not cat.at[i, "file"]
                else f"image file {cat.at[i, 'file']} not found under {images_dir}"
            )
            pending_rejects.append(
                {"id": cat.at[i, "id"], "file": cat.at[i, "file"], "reason": reason}
            )
            continue
        sc = float(scales[i])
        tasks.append((int(i), path, float(r90[i]), sc if np.isfinite(sc) else None))
    add_rejects(pending_rejects)

    batches = [tasks[k : k + batch_size] for k in range(0, len(tasks), batch_size)]
    keep_cols = [c for c in cat.columns if c != "image_index"]

    def commit(res) -> None:
        ok, arr, rules, rejects = res
        if rejects:
            add_rejects(
                [{"id": cat.at[p, "id"], "file": cat.at[p, "file"], "reason": why}
                 for p, why in rejects]
            )
        if ok:
            rows = cat.loc[ok, keep_cols].copy()
            rows["survey"] = surv.name
            rows["crop_rule"] = rules
            writer.append(rows.reset_index(drop=True), arr)
            result.n_ingested += len(ok)

    columns = [
        TextColumn("[bold]ingest[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f}/s"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=False, label=f"ingest {Path(out).name}",
                  unit="galaxies") as bar:
        task_id = bar.add_task(Path(out).name, total=len(tasks), rate=0.0)
        t_start = time.perf_counter()

        def advance(n: int) -> None:
            el = max(time.perf_counter() - t_start, 1e-9)
            bar.update(task_id, advance=n, rate=(bar.tasks[0].completed + n) / el)

        if workers <= 1 or len(batches) <= 1:
            for b in batches:
                commit(_process_batch(b, cfg))
                advance(len(b))
        else:
            # forkserver: no fork of a parent that holds zarr/BLAS threads
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            # Results are committed in submission order, so the Store's rows follow the catalogue
            # and an interruption leaves a clean prefix (plus rejects) behind.
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_worker_init
            ) as pool:
                max_in_flight = 2 * workers
                futures: list = []
                nxt = 0
                try:
                    while nxt < len(batches) or futures:
                        while nxt < len(batches) and len(futures) < max_in_flight:
                            futures.append((pool.submit(_process_batch, batches[nxt], cfg),
                                            len(batches[nxt])))
                            nxt += 1
                        fut, n = futures[0]
                        wait([fut], return_when=FIRST_COMPLETED)
                        futures.pop(0)
                        commit(fut.result())
                        advance(n)
                except BaseException:
                    # Ctrl-C or a crash: committed batches stay; queued work is dropped at once
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise

    result.seconds = time.perf_counter() - t0
    result.reject_reasons = reasons
    store = Store(out)
    store.ingest_report = result  # type: ignore[attr-defined]
    return store


def parse_bands(text: str | None) -> tuple[str, ...] | None:
    """'g,r,i' or 'gri' -> ('g', 'r', 'i'); None stays None."""
    if text is None or str(text).strip() == "":
        return None
    t = str(text).replace(" ", "")
    return tuple(t.split(",")) if "," in t else tuple(t)


def check_figure(
    store: str | os.PathLike | Store,
    out_png: str | os.PathLike,
    n: int = 8,
    seed: int = 0,
    label_task: str | None = "Q1",
) -> pd.DataFrame:
    """A PNG of n galaxies: the original cutout next to its bands x 69 x 69 model input.

    The model input is shown as a colour picture with the Store's bands reversed into R, G, B
    (g,r,i -> B,G,R, as the SkyServer composites) and each band at its own maximum = 1, exactly
    the values the network sees. Writes ``<out_png stem>.csv``: the table the figure was drawn
    from (id, file, label, per-band maxima of the original). Returns that table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from morphtransfer.tasks import robust_labels

    s = store if isinstance(store, Store) else Store(store)
    cat = s.catalog
    if len(cat) == 0:
        raise InputError(f"Store {s.path} is empty; nothing to show")
    root = Path(s.meta.get("ingest", {}).get("images", "."))
    rng = np.random.default_rng(seed)
    labels = None
    if label_task:
        try:
            labels = robust_labels(cat, label_task)
        except InputError:
            labels = None
    if labels is not None and (labels >= 0).any():
        # half of each class when there are labels, so both kinds of galaxy are shown
        picks = []
        for v in (0, 1):
            pool = np.nonzero(labels.to_numpy() == v)[0]
            picks += list(rng.choice(pool, size=min(len(pool), n // 2), replace=False))
        rows = cat.iloc[sorted(picks)]
    else:
        rows = cat.iloc[sorted(rng.choice(len(cat), size=min(n, len(cat)), replace=False))]
    imgs = s.read_images(rows["image_index"].to_numpy())
    fig, axes = plt.subplots(2, len(rows), figsize=(2.0 * len(rows), 4.3), squeeze=False)
    records = []
    for k, ((_, row), img) in enumerate(zip(rows.iterrows(), imgs)):
        path = root / str(row.get("file", ""))
        ax = axes[0, k]
        if path.exists() and path.suffix.lower() in IMAGE_SUFFIXES:
            orig = np.asarray(Image.open(path).convert("RGB"))
            ax.imshow(orig)
            ax.set_title(f"{orig.shape[1]}x{orig.shape[0]} original", fontsize=7)
        else:
            ax.text(0.5, 0.5, "original\nnot shown", ha="center", va="center", fontsize=7)
        ax.axis("off")
        rgb = np.clip(img[::-1].transpose(1, 2, 0), 0, 1)  # bands blue->red into B,G,R
        lab = int(labels.loc[row.name]) if labels is not None else -1
        names = {1: "features/disk", 0: "smooth", -1: "no label"}
        name = names[lab] if label_task == "Q1" else str(lab)
        axes[1, k].imshow(rgb, interpolation="nearest")
        axes[1, k].set_title(f"69x69 input\n{label_task}: {name}", fontsize=7)
        axes[1, k].axis("off")
        records.append({"id": row["id"], "file": str(row.get("file", "")), "label": lab,
                        "crop_rule": row.get("crop_rule", ""),
                        **{f"mean_{b}": float(img[i].mean()) for i, b in enumerate(s.bands)}})
    fig.suptitle(f"{s.path.name}: real cutouts (top) and model inputs (bottom), bands "
                 f"{','.join(s.bands)}", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    table = pd.DataFrame(records)
    table.to_csv(out_png.with_suffix(".csv"), index=False)
    return table
