"""Classify a whole survey: one pass over the images for all models, written as a catalogue.

``predict_catalog(models, out, store=... | images=...)`` reads every galaxy's image once, runs
every model on it (one per task: the columns are ``p_<task>``, e.g. ``p_Q1``), and writes a
Parquet or FITS catalogue with id, ra, dec, the probabilities and provenance (model ids, package
version, input path and hash). The same function runs locally (a reader thread overlapping Zarr
reads with the network) or on a Ray cluster (Ray Data ``map_batches`` over a pool of model
actors, one per GPU when there are GPUs).

Resumable and idempotent. The work is cut into shards of ``shard_size`` galaxies fixed once in a
plan (``<out>.parts/plan.parquet``, one row group per shard; ``plan.json`` holds the run's
fingerprint). Each finished shard is committed by an atomic rename
(``<out>.parts/shard-000123.parquet``), so a run killed at any point loses at most the shards in
flight; the next run with the same arguments computes only the missing shards, then merges them
into ``<out>`` (temp file + rename) and removes the parts. Each shard is computed the same way
whatever the engine or the order (fixed micro-batches, Monte Carlo dropout seeded per shard), so
a resumed or distributed run gives the same numbers as an uninterrupted local one.

Per-galaxy problems (an unreadable or wrongly shaped cutout, non-finite pixels, a catalogue id
absent from the Store) go to ``<out>.rejects.csv`` with the reason; the run goes on. Problems of
the whole run (a non-DS18 model, two models of one task, images that do not fit the models)
raise InputError before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from morphtransfer import __version__
from morphtransfer.errors import InputError
from morphtransfer.inference import CPU_COMPUTE_BATCH, bf16_supported  # noqa: F401 (re-exported)
from morphtransfer.inference import default_device

CATALOGUE_FORMAT = "morphtransfer-catalogue"
CATALOGUE_VERSION = 1
META_KEY = b"morphtransfer"

# 16,384 galaxies = 64 Zarr chunks of 256 (store.CHUNK_GALAXIES): shard reads are chunk-aligned, a
# shard of 3 models is a ~20 s unit of work on 2 CPU cores (little lost when killed), and 300
# million galaxies make ~18,000 shard files, few enough for one folder.
DEFAULT_SHARD_SIZE = 16384
# Shard k is row group k of the plan; pyarrow caps row groups at 1,048,576 rows by default.
MAX_SHARD_SIZE = 1 << 20
# The network's micro-batch on CPU is inference.CPU_COMPUTE_BATCH (32: one layer's activations
# stay in cache); on a GPU the whole read batch goes through at once.
# Batches read ahead of the network per reader thread (+1): enough to hide Zarr reads.
PREFETCH_BATCHES = 2

OUTPUT_KINDS = {".parquet": "parquet", ".pq": "parquet", ".fits": "fits", ".fit": "fits"}
# the catalogue's names (provenance, run fingerprint) of inference.resolve_precision's values:
# inference casts the weights, so bfloat16 is "bf16-true" here
PRECISIONS = {"32-true": "32-true", "bf16-mixed": "bf16-true"}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def output_kind(out: str | os.PathLike) -> str:
    """'parquet' or 'fits' from the output file's suffix (InputError otherwise)."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_KINDS:
        raise InputError(
            f"output {out}: unknown catalogue type {suffix!r}; name it .parquet or .fits"
        )
    return OUTPUT_KINDS[suffix]


def parts_dir(out: str | os.PathLike) -> Path:
    """Folder of the shards of a run writing ``out`` (removed once merged)."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def rejects_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".rejects.csv")


def normalise_precision(precision: str, device: str = "cpu") -> str:
    """"32-true" (float32) or "bf16-true" (bfloat16 weights and activations) for a precision name
    on ``device``; "auto" is bf16 where bfloat16 is native (inference.resolve_precision)."""
    from morphtransfer.inference import resolve_precision

    name = resolve_precision(precision, device)
    if name not in PRECISIONS:
        raise InputError(
            f"precision {precision!r}: predict runs 'auto', '32-true' (float32) or 'bf16' (bfloat16)"
        )
    return PRECISIONS[name]


# --------------------------------------------------------------------------------------------
# models: validated once, before any work
# --------------------------------------------------------------------------------------------
def check_models(models: list[str | os.PathLike], n_bands: int | None = None, image_size=None):
    """Read the model cards; refuse a non-DS18 card, a card without task, two models of one task,
    or models whose input (bands, image size) does not fit the images. Returns the cards."""
    from morphtransfer.models import read_card

    if not models:
        raise InputError("no model given; pass at least one model folder (--models M1 [M2 ...])")
    cards, seen = [], {}
    for m in models:
        card = read_card(m)
        arch = card.get("architecture")
        if arch != "ds18":
            raise InputError(
                f"model {m} is architecture {arch!r}; predict runs DS18 models (architecture "
                "'ds18', written by `morphtransfer train`)"
            )
        task = str(card.get("task") or "").strip()
        if not task:
            raise InputError(f"model {m}: its card names no task; re-train it with `morphtransfer train`")
        if task.upper() in seen:
            raise InputError(
                f"models {seen[task.upper()]} and {m} are both for task {task!r}: the catalogue has "
                f"one column p_{task} per task, so pass one model per task"
            )
        seen[task.upper()] = str(m)
        if n_bands is not None and int(card.get("in_channels", 3)) != n_bands:
            raise InputError(
                f"model {m} takes {card.get('in_channels')} bands but the images have {n_bands}; "
                "use a model trained on images with the same bands"
            )
        if image_size is not None and int(card.get("image_size", 69)) != image_size:
            raise InputError(
                f"model {m} takes {card.get('image_size')} x {card.get('image_size')} images but the "
                f"images are {image_size} x {image_size}"
            )
        cards.append({**card, "path": str(Path(m).resolve()), "task": task})
    return cards


# --------------------------------------------------------------------------------------------
# the plan: which galaxies, in which shard
# --------------------------------------------------------------------------------------------
def _list_image_files(directory: Path) -> list[Path]:
    from morphtransfer.data.readers import IMAGE_SUFFIXES, is_fits

    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_fits(p))
    )


def _image_id(path: Path) -> str:
    name = path.name
    for s in (".fits.gz", ".fits.fz"):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _empty_strings(n: int) -> np.ndarray:
    return np.full(n, "", dtype=object)


def _float_col(df: pd.DataFrame, name: str) -> np.ndarray:
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype="float64")
    return np.full(len(df), np.nan)


def _plan_from_store(store, catalog: str | os.PathLike | None) -> pd.DataFrame:
    cat = store.catalog
    base = pd.DataFrame(
        {
            "id": cat["id"].astype(str).to_numpy(dtype=object),
            "ra": _float_col(cat, "ra"),
            "dec": _float_col(cat, "dec"),
            "image_index": cat["image_index"].to_numpy(dtype="int64"),
        }
    )
    base["reject_reason"] = _empty_strings(len(base))
    if catalog is None:
        return base
    from morphtransfer.data.catalogs import read_table

    wanted = read_table(catalog)
    if "id" not in wanted.columns:
        raise InputError(f"catalogue {catalog} has no 'id' column: it selects Store galaxies by id")
    ids = wanted["id"].astype(str)
    dup = ids.duplicated().to_numpy()
    chosen = base[base["id"].isin(set(ids[~dup]))]
    missing_ids = sorted(set(ids[~dup]) - set(base["id"]))
    extra = pd.DataFrame(
        {
            "id": np.array(missing_ids + ids[dup].tolist(), dtype=object),
            "ra": np.nan,
            "dec": np.nan,
            "image_index": np.int64(-1),
            "reject_reason": np.array(
                [f"id not in Store {store.path}"] * len(missing_ids)
                + ["duplicate id in catalogue (classified once)"] * int(dup.sum()),
                dtype=object,
            ),
        }
    )
    return pd.concat([chosen, extra], ignore_index=True)


def _plan_from_images(directory: Path, catalog: str | os.PathLike | None) -> pd.DataFrame:
    if not directory.is_dir():
        raise InputError(f"--images {directory} is not a folder of cutouts")
    if catalog is None:
        files = _list_image_files(directory)
        if not files:
            raise InputError(f"--images {directory} holds no FITS, JPEG or PNG cutouts")
        ids = [_image_id(p) for p in files]
        plan = pd.DataFrame(
            {
                "id": np.array(ids, dtype=object),
                "file": np.array([p.name for p in files], dtype=object),
                "ra": np.nan,
                "dec": np.nan,
                "r90_arcsec": np.nan,
            }
        )
    else:
        from morphtransfer.data.catalogs import read_table

        cat = read_table(catalog)
        if "id" not in cat.columns:
            raise InputError(
                f"catalogue {catalog} has no 'id' column; it needs id and optionally file (path "
                "relative to --images), ra, dec, r90_arcsec"
            )
        ids = cat["id"].astype(str).to_numpy(dtype=object)
        if "file" in cat.columns:
            files = cat["file"].fillna("").astype(str).to_numpy(dtype=object)
        else:
            by_id = {_image_id(p): p.name for p in _list_image_files(directory)}
            files = np.array([by_id.get(i, "") for i in ids], dtype=object)
        plan = pd.DataFrame(
            {
                "id": ids,
                "file": files,
                "ra": _float_col(cat, "ra"),
                "dec": _float_col(cat, "dec"),
                "r90_arcsec": _float_col(cat, "r90_arcsec"),
            }
        )
    reasons = _empty_strings(len(plan))
    dup = plan["id"].duplicated().to_numpy()
    reasons[dup] = "duplicate id in catalogue (classified once)"
    no_file = (plan["file"] == "").to_numpy() & ~dup
    reasons[no_file] = "no image file for this id in --images"
    plan["reject_reason"] = reasons
    return plan


# --------------------------------------------------------------------------------------------
# image sources: a shard's rows -> (images, per-row reject reasons)
# --------------------------------------------------------------------------------------------
class _StoreSource:
    def __init__(self, spec: dict):
        from morphtransfer.data.store import Store

        self.store = Store(spec["path"])

    def read(self, rows: pd.DataFrame, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reasons = _empty_strings(len(rows))
        idx = rows["image_index"].to_numpy(dtype="int64")[ok]
        images = self.store.read_images(idx)
        if len(images) == 0:
            return images, reasons
        finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if not finite.all():
            where = np.nonzero(ok)[0]
            reasons[where[~finite]] = "NaN/inf pixels in the Store image"
            images = images[finite]
        return images, reasons


class _ImagesSource:
    """Raw cutouts: the real-data readers and the study's preprocessing (data/readers, preprocess)."""

    def __init__(self, spec: dict):
        self.dir = Path(spec["path"])
        self.bands = tuple(spec["bands"])
        self.survey = spec.get("survey")
        self.pixel_scale_arcsec = spec.get("pixel_scale_arcsec")
        self.image_size = int(spec.get("image_size", 69))

    def read(self, rows: pd.DataFrame, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from morphtransfer.data.preprocess import PreprocessError, preprocess_cutout
        from morphtransfer.data.readers import ReadError, read_cutout

        reasons = _empty_strings(len(rows))
        out = []
        files = rows["file"].to_numpy()
        r90 = rows["r90_arcsec"].to_numpy(dtype="float64")
        for i in np.nonzero(ok)[0]:
            path = self.dir / files[i]
            try:
                # decode JPEGs at the same DCT reduction as `ingest` (>= 2x the model input), so
                # the model sees at prediction time exactly the pixels it was trained on
                cut = read_cutout(
                    path, bands=self.bands, survey=self.survey, min_size=2 * self.image_size
                )
                scale = cut.pixel_scale_arcsec
                if scale is None and self.pixel_scale_arcsec:
                    # composites carry no WCS: the survey's scale, per decoded pixel
                    scale = self.pixel_scale_arcsec / cut.reduction
                img = preprocess_cutout(cut.data, scale, r90[i], size=self.image_size)
            except (ReadError, PreprocessError, InputError) as exc:
                reasons[i] = str(exc)
                continue
            if img.shape != (len(self.bands), self.image_size, self.image_size):
                reasons[i] = f"wrong shape {img.shape} after preprocessing"
                continue
            out.append(img)
        shape = (0, len(self.bands), self.image_size, self.image_size)
        return (np.stack(out) if out else np.zeros(shape, np.float32)), reasons


def _open_source(spec: dict):
    return _StoreSource(spec) if spec["kind"] == "store" else _ImagesSource(spec)


# --------------------------------------------------------------------------------------------
# the worker: models loaded once; a shard in, a committed shard file out
# --------------------------------------------------------------------------------------------
class ShardPredictor:
    """Loads the models once and turns shards of the plan into committed shard files.

    Used as is by the local engine and as the callable class of Ray Data ``map_batches`` (one
    instance per actor): ``__call__({"shard": [k, ...]})`` computes and commits those shards.
    """

    def __init__(self, run: dict, num_threads: int | None = None):
        import torch

        from morphtransfer.inference import compute_batch, prepare_model
        from morphtransfer.models import load_model

        self.run = run
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = torch.device(run.get("device") or default_device())
        self.models, self.tasks = [], []
        for m in run["models"]:
            model, card = load_model(m["path"], expect_task=m["task"])
            # inference.prepare_model: bf16 weights (not autocast), channels_last, eval mode
            self.models.append(prepare_model(model, run["precision"], self.device))
            self.tasks.append(m["task"])
        self.mc_dropout = int(run.get("mc_dropout", 0))
        self.batch_size = int(run["batch_size"])
        self.compute_batch = compute_batch(self.device, self.batch_size)
        # One reader on CPU (a second would take a core from the network); several on a GPU,
        # which can outrun one thread decompressing Zarr chunks.
        self.reader_threads = int(run.get("reader_threads") or (
            min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 1))
        self.parts = Path(run["parts_dir"])
        self.plan = pq.ParquetFile(self.parts / "plan.parquet")
        self.source = _open_source(run["source"])

    # --- reading ------------------------------------------------------------------------------
    def shard_rows(self, k: int) -> pd.DataFrame:
        return self.plan.read_row_group(k).to_pandas()

    def read_tasks(self, shards: list[int]) -> Iterator:
        """Callables, in order, each reading one batch of one shard (run in reader threads)."""
        for k in shards:
            rows = self.shard_rows(k)
            starts = list(range(0, len(rows), self.batch_size)) or [0]
            for s in starts:
                part = rows.iloc[s : s + self.batch_size].reset_index(drop=True)
                yield partial(self.read_batch, k, part, s == starts[-1])

    def read_batch(self, k: int, part: pd.DataFrame, last: bool):
        """(k, rows, images of the rows without reason, reasons, per-galaxy digests, last)."""
        pre = part["reject_reason"].fillna("").to_numpy(dtype=object)
        ok = pre == ""
        images, reasons = self.source.read(part, ok)
        reasons = np.where(ok, reasons, pre)
        images = np.ascontiguousarray(images, dtype=np.float32)
        # 16-byte sha256 prefix of each model input: the catalogue's input hash is built from
        # these in catalogue order, so it does not depend on shard or batch sizes
        digests = np.full(len(part), None, dtype=object)
        digests[reasons == ""] = [hashlib.sha256(im.data).digest()[:16] for im in images]
        return k, part, images, reasons, digests, last

    # --- computing ----------------------------------------------------------------------------
    def start_shard(self, k: int) -> None:
        """Seed Monte Carlo dropout per shard: the masks do not depend on engine or order."""
        if self.mc_dropout:
            import torch

            torch.manual_seed(int(self.run.get("seed", 0)) * 1_000_003 + int(k))

    def predict_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{"p_<task>" [, "p_<task>_std", "p_<task>_mc_mean"]} for images (n, bands, size, size):
        inference.run_prepared, every model on each micro-batch in turn."""
        from morphtransfer.inference import run_prepared

        outs = run_prepared(self.models, images, batch=self.compute_batch, mc_dropout=self.mc_dropout)
        cols: dict[str, np.ndarray] = {}
        for t, o in zip(self.tasks, outs):
            cols[f"p_{t}"] = o["p"]
            if self.mc_dropout:
                cols[f"p_{t}_std"] = o["std"]
                cols[f"p_{t}_mc_mean"] = o["mc_mean"]
        return cols

    # --- writing ------------------------------------------------------------------------------
    def write_shard(self, k: int, pieces: list[pd.DataFrame]) -> int:
        table = pa.Table.from_pandas(pd.concat(pieces, ignore_index=True), preserve_index=False)
        meta = {"shard": k, "n": table.num_rows}
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        final = self.parts / f"shard-{k:06d}.parquet"
        tmp = final.with_name(final.name + f".{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # the commit point of the shard
        return table.num_rows

    def result_frame(self, rows: pd.DataFrame, images, reasons, digests) -> pd.DataFrame:
        cols = self.predict_images(images)
        ok = reasons == ""
        out = pd.DataFrame({"id": rows["id"].astype(str).to_numpy(dtype=object)})
        out["ra"] = rows["ra"].to_numpy(dtype="float64")
        out["dec"] = rows["dec"].to_numpy(dtype="float64")
        for name, values in cols.items():
            full = np.full(len(rows), np.nan, dtype=np.float32)
            full[ok] = values
            out[name] = full
        out["file"] = rows["file"].to_numpy(dtype=object) if "file" in rows else _empty_strings(len(rows))
        out["reject_reason"] = reasons.astype(object)
        out["image_digest"] = digests
        return out

    def run_shards(self, shards: list[int], advance=None, reader_threads: int = 1) -> list[int]:
        """Compute and commit shards in order; reading runs ahead in ``reader_threads`` threads
        (Zarr decompression and image decoding release the GIL) while the network computes."""
        done, current, pieces = [], None, []
        depth = reader_threads + PREFETCH_BATCHES - 1
        for k, rows, images, reasons, digests, last in _ordered_prefetch(
            self.read_tasks(shards), reader_threads, depth
        ):
            if k != current:
                current, pieces = k, []
                self.start_shard(k)
            pieces.append(self.result_frame(rows, images, reasons, digests))
            if last:
                n = self.write_shard(k, pieces)
                done.append(n)
                if advance is not None:
                    advance(n)
        return done

    def __call__(self, batch: dict) -> dict:
        shards = [int(k) for k in batch["shard"]]
        n = self.run_shards(shards, reader_threads=self.reader_threads)
        return {"shard": np.array(shards, dtype=np.int64), "n": np.array(n, dtype=np.int64)}


def _ordered_prefetch(tasks: Iterator, threads: int, depth: int) -> Iterator:
    """Run callables in a thread pool, at most ``depth`` ahead, yielding results in order."""
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="morphtransfer-read")
    futures: deque = deque()
    try:
        for task in tasks:
            futures.append(pool.submit(task))
            if len(futures) > depth:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()
    finally:
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------------
def _run_local(run: dict, pending: list[int], advance) -> None:
    worker = ShardPredictor(run, num_threads=run.get("num_threads"))
    worker.run_shards(pending, advance, reader_threads=worker.reader_threads)


def _ray_resources(num_workers: int | None) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor): one actor per GPU, else 2 CPUs per actor.

    Two CPUs per CPU actor: the network's oneDNN kernels scale well to 2 threads and an actor
    costs a copy of the models (~30 MB each); ``num_workers`` splits the CPUs evenly instead.
    """
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    if gpus > 0:
        n = num_workers or gpus
        return n, float(max(1, min(4, cpus // n))), 1.0
    if num_workers:
        return num_workers, float(max(1, cpus // num_workers)), 0.0
    per = 2 if cpus >= 2 else 1
    return max(1, cpus // per), float(per), 0.0


def _run_ray(run: dict, pending: list[int], advance, address: str | None, num_workers) -> None:
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - ray[data] is a dependency
        raise InputError("--engine ray needs ray[data]: pip install 'ray[data]'") from exc

    started_here = not ray.is_initialized()
    if started_here:
        # address=None starts a local Ray; "auto" or "ray://host:10001" joins a cluster.
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        n_actors, cpus, gpus = _ray_resources(num_workers)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"shard": k} for k in pending])
        ds = ds.map_batches(
            ShardPredictor,
            fn_constructor_kwargs={"run": run, "num_threads": max(1, int(cpus))},
            batch_size=1,  # one shard per call: each call commits one shard file
            batch_format="numpy",
            concurrency=min(n_actors, max(1, len(pending))),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        for row in ds.iter_rows():
            advance(int(row["n"]))
    finally:
        if started_here:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# merging shards into the catalogue
# --------------------------------------------------------------------------------------------
def _column_descriptions(tasks: list[str], mc_dropout: int) -> dict[str, tuple[str, str]]:
    """column -> (unit, description) for FITS TUNITn/TCOMMn and Parquet metadata."""
    from morphtransfer.tasks import TASKS

    d = {
        "id": ("", "galaxy id (catalogue id)"),
        "ra": ("deg", "right ascension (J2000)"),
        "dec": ("deg", "declination (J2000)"),
    }
    for t in tasks:
        title = TASKS[t.upper()].title if t.upper() in TASKS else t
        d[f"p_{t}"] = ("", f"P({t}: {title}) from the model, dropout off")
        if mc_dropout:
            d[f"p_{t}_std"] = ("", f"std of P({t}) over {mc_dropout} MC-dropout passes")
            d[f"p_{t}_mc_mean"] = ("", f"mean of P({t}) over {mc_dropout} MC-dropout passes")
    return d


def _fits_header_cards(h, provenance: dict) -> None:
    h["ORIGIN"] = ("morphtransfer", "package that wrote this catalogue")
    h["MTVERS"] = (provenance["package_version"], "morphtransfer version")
    h["RUNID"] = (provenance["run_id"], "fingerprint of models, input and options")
    h["DATE"] = (provenance["created"], "UTC time the catalogue was written")
    h["NGAL"] = (provenance["n_galaxies"], "galaxies classified")
    h["NREJECT"] = (provenance["n_rejected"], "galaxies in the rejects table")
    h["PRECISN"] = (provenance["precision"], "numeric precision of the network")
    h["MCDROP"] = (provenance["mc_dropout"], "Monte Carlo dropout passes (0 = none)")
    src = provenance["input"]
    h["INKIND"] = (src["kind"], "input: Store or folder of cutouts")
    h["INPATH"] = src["path"]  # input path (long paths use CONTINUE cards)
    if src.get("survey"):
        h["SURVEY"] = (src["survey"], "survey of the input images")
    # sha256 over the 16-byte sha256 prefixes of every model input, in catalogue order
    h["INHASH"] = provenance["images_sha256"]
    h["NMODELS"] = (len(provenance["models"]), "models applied")
    for i, m in enumerate(provenance["models"], start=1):
        h[f"MODEL{i}"] = (m["model_id"], f"model id (weights sha256) of p_{m['task']}")
        h[f"TASK{i}"] = (m["task"], f"task of model {i}")
        h[f"MSURV{i}"] = (str(m.get("survey", "")), f"survey model {i} was trained on")
        h[f"MPATH{i}"] = m["path"]  # folder of model i (long paths use CONTINUE cards)


def _write_fits(shard_paths: list[Path], path: Path, provenance: dict, descriptions: dict,
                columns: list[str], n_rows: int, id_width: int) -> None:
    """Stream the good rows of every shard into a FITS binary table (memory: one shard).

    The header (with NAXIS2 = all rows) is written first, then each shard's rows as big-endian
    records in the table's layout, then the padding to a 2880-byte block; the provenance JSON
    goes in a second extension. Readable by astropy Table.read(path, hdu="CATALOGUE"), TOPCAT...
    """
    from astropy.io import fits

    formats = {"id": f"{max(1, id_width)}A", "ra": "D", "dec": "D"}
    fcols = [
        fits.Column(name=c, format=formats.get(c, "E"), unit=descriptions.get(c, ("", ""))[0] or None)
        for c in columns
    ]
    hdu = fits.BinTableHDU.from_columns(fcols, nrows=0, name="CATALOGUE")
    h = hdu.header
    h["NAXIS2"] = n_rows
    for i, c in enumerate(columns, start=1):
        if descriptions.get(c, ("", ""))[1]:
            h[f"TCOMM{i}"] = descriptions[c][1][:68]  # one FITS card
    _fits_header_cards(h, provenance)
    dtype = np.dtype(
        [("id", f"S{max(1, id_width)}")]
        + [(c, ">f8" if c in ("ra", "dec") else ">f4") for c in columns if c != "id"]
    )
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = "morphtransfer"
    primary.header["RUNID"] = provenance["run_id"]
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with tmp.open("wb") as fh:
        fh.write(primary.header.tostring().encode("ascii"))
        fh.write(h.tostring().encode("ascii"))
        for sp in shard_paths:
            t = pq.read_table(sp)
            good = t.column("reject_reason").to_numpy(zero_copy_only=False) == ""
            rec = np.zeros(int(good.sum()), dtype=dtype)
            for c in columns:
                v = t.column(c).to_numpy(zero_copy_only=False)[good]
                rec[c] = np.char.encode(v.astype(str), "utf-8") if c == "id" else v
            fh.write(rec.tobytes())
            written += len(rec)
        fh.write(b"\0" * ((-written * dtype.itemsize) % 2880))
    if written != n_rows:  # pragma: no cover - shards changed under us
        raise RuntimeError(f"FITS merge wrote {written} rows, expected {n_rows}")
    blob = json.dumps(provenance)
    prov = fits.BinTableHDU.from_columns(
        [fits.Column(name="JSON", format=f"{len(blob.encode())}A", array=np.array([blob]))],
        name="PROVENANCE",
    )
    fits.append(tmp, prov.data, prov.header)
    os.replace(tmp, path)


def _merge(run: dict, n_shards: int, out: Path, kind: str, provenance: dict) -> tuple[int, int]:
    """Shards -> ``out`` (streamed, one shard in memory) and ``<out>.rejects.csv``."""
    parts = Path(run["parts_dir"])
    tasks = [m["task"] for m in run["models"]]
    descriptions = _column_descriptions(tasks, run["mc_dropout"])
    shard_paths = [parts / f"shard-{k:06d}.parquet" for k in range(n_shards)]
    # pass 1 (ids and reasons only): input hash, counts, rejects, widest id
    h = hashlib.sha256()
    rejects: list[pd.DataFrame] = []
    n_good, id_width = 0, 1
    for sp in shard_paths:
        t = pq.read_table(sp, columns=["id", "file", "reject_reason", "image_digest"])
        ids = t.column("id").to_numpy(zero_copy_only=False)
        reason = t.column("reject_reason").to_numpy(zero_copy_only=False)
        bad = reason != ""
        h.update(b"".join(t.column("image_digest").to_numpy(zero_copy_only=False)[~bad]))
        if bad.any():
            files = t.column("file").to_numpy(zero_copy_only=False)
            rejects.append(pd.DataFrame({"id": ids[bad], "file": files[bad], "reason": reason[bad]}))
        n_good += int((~bad).sum())
        if (~bad).any():
            id_width = max(id_width, max(len(str(i).encode()) for i in ids[~bad]))
    internal = ("file", "reject_reason", "image_digest")
    columns = [c for c in pq.read_schema(shard_paths[0]).names if c not in internal]
    provenance["images_sha256"] = h.hexdigest()
    provenance["n_galaxies"] = n_good
    provenance["n_rejected"] = int(sum(len(r) for r in rejects))
    provenance["columns"] = {c: {"unit": descriptions[c][0], "description": descriptions[c][1]}
                             for c in columns if c in descriptions}
    rej = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=["id", "file", "reason"])
    rpath = rejects_path(out)
    rej.to_csv(rpath.with_name(rpath.name + ".tmp"), index=False)
    os.replace(rpath.with_name(rpath.name + ".tmp"), rpath)
    # pass 2: the catalogue
    if kind == "fits":
        _write_fits(shard_paths, out, provenance, descriptions, columns, n_good, id_width)
        return n_good, provenance["n_rejected"]
    tmp = out.with_name(out.name + ".tmp")
    writer = None
    try:
        for sp in shard_paths:
            t = pq.read_table(sp)
            good = pa.array(t.column("reject_reason").to_numpy(zero_copy_only=False) == "")
            t = t.filter(good).select(columns).replace_schema_metadata(None)
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
        writer.add_key_value_metadata({META_KEY.decode(): json.dumps(provenance)})
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    return n_good, provenance["n_rejected"]


def read_provenance(path: str | os.PathLike) -> dict:
    """The provenance dict a catalogue was written with (Parquet metadata or FITS PROVENANCE HDU)."""
    path = Path(path)
    if output_kind(path) == "parquet":
        meta = pq.read_metadata(path).metadata or {}
        if META_KEY not in meta:
            raise InputError(f"{path} was not written by morphtransfer predict (no provenance)")
        return json.loads(meta[META_KEY])
    from astropy.io import fits

    with fits.open(path) as hdul:
        if "PROVENANCE" not in hdul:
            raise InputError(f"{path} was not written by morphtransfer predict (no PROVENANCE HDU)")
        return json.loads(str(hdul["PROVENANCE"].data["JSON"][0]))


def _existing_run_id(out: Path) -> str | None:
    if not out.exists():
        return None
    try:
        return read_provenance(out).get("run_id")
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# the public function
# --------------------------------------------------------------------------------------------
def predict_catalog(
    models: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    catalog: str | os.PathLike | None = None,
    batch_size: int = 1024,
    engine: str = "local",
    address: str | None = None,
    mc_dropout: int = 0,
    precision: str = "auto",
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    survey: str | None = None,
    bands: list[str] | None = None,
    seed: int = 0,
    device: str | None = None,
    num_workers: int | None = None,
    num_threads: int | None = None,
    reader_threads: int | None = None,
) -> Path:
    """Classify every galaxy of a Store (or a folder of cutouts) with every model; returns ``out``.

    One pass over the images for all models. ``out`` ends in .parquet or .fits; galaxies that
    cannot be classified are listed in ``<out>.rejects.csv``. Re-running with the same arguments
    resumes an interrupted run (or returns at once when ``out`` is complete).

    store / images: a morphtransfer Store, or a folder of FITS/JPEG/PNG cutouts (then ``survey``
    gives the band order of composites and the pixel scale; ``catalog`` may list id, file, ra,
    dec, r90_arcsec). With a Store, ``catalog`` (a table with an ``id`` column) selects galaxies.
    engine: "local" or "ray" (``address``: a Ray cluster, e.g. "auto"; None starts a local Ray).
    mc_dropout: N >= 2 adds ``p_<task>_std`` and ``p_<task>_mc_mean`` over N passes with dropout
    on (masks seeded by ``seed`` and the shard, so a rerun gives the same numbers).
    precision: "auto" (bfloat16 where it is native on ``device``: AVX512-BF16/AMX CPUs, bf16 CUDA
    GPUs; else float32), "32-true" (float32) or "bf16" (bfloat16 weights and activations); the
    provenance records the resolved "32-true" or "bf16-true".
    batch_size: images read per batch (on CPU the network runs them in micro-batches of
    CPU_COMPUTE_BATCH, which is faster there); shard_size: galaxies per committed shard, the unit
    of resumption and of Ray tasks. device: "cpu", "cuda" (default: cuda when available).
    num_workers: Ray actors (default one per GPU, else one per 2 CPUs); num_threads: torch threads
    of the local engine; reader_threads: threads reading ahead (default 1 on CPU, 8 on a GPU).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from morphtransfer.progress import Progress

    out = Path(out)
    kind = output_kind(out)
    dev = device or default_device().type
    precision = normalise_precision(precision, dev)
    if engine not in ("local", "ray"):
        raise InputError(f"unknown engine {engine!r}; use 'local' or 'ray'")
    if (store is None) == (images is None):
        raise InputError("give exactly one input: a Store (--store) or a folder of cutouts (--images)")
    if int(batch_size) < 1 or not 1 <= int(shard_size) <= MAX_SHARD_SIZE:
        raise InputError(
            f"batch_size ({batch_size}) must be >= 1 and shard_size ({shard_size}) between 1 and "
            f"{MAX_SHARD_SIZE:,}"
        )
    if int(mc_dropout) < 0 or int(mc_dropout) == 1:
        raise InputError(f"--mc-dropout {mc_dropout}: give 0 (off) or N >= 2 passes for a std")
    if precision == "bf16-true" and not bf16_supported(dev):
        warnings.warn(
            f"bfloat16 is not native on this {dev}: it runs emulated (slow); use --precision 32-true",
            stacklevel=2,
        )

    # --- input and models, checked before any work ---------------------------------------
    if store is not None:
        from morphtransfer.data.store import Store

        st = Store(store)
        n_bands, size = st.image_shape[0], st.image_shape[1]
        cards = check_models(models, n_bands, size)
        source = {"kind": "store", "path": str(Path(store).resolve()), "survey": st.survey}
        identity = {
            "parts": [
                (p.name, p.stat().st_size) for p in sorted((st.path / "catalog").glob("part-*.parquet"))
            ],
            "n": len(st.catalog),
        }
        make_plan = lambda: _plan_from_store(st, catalog)  # noqa: E731
    else:
        from morphtransfer.surveys import get_survey

        cards = check_models(models)
        sv = get_survey(survey) if survey else None
        use_bands = list(bands) if bands else (list(sv.band_names) if sv else None)
        if use_bands is None:
            raise InputError(
                "--images needs the band order of the model input: give --survey (sdss, des, "
                "decals) or --bands g,r,i"
            )
        n_in = int(cards[0].get("in_channels", 3))
        if len(use_bands) != n_in:
            raise InputError(f"bands {use_bands} do not fit models with {n_in} input bands")
        check_models(models, len(use_bands), int(cards[0].get("image_size", 69)))
        source = {
            "kind": "images",
            "path": str(Path(images).resolve()),
            "survey": survey,
            "bands": use_bands,
            "pixel_scale_arcsec": sv.pixel_scale_arcsec if sv else None,
            "image_size": int(cards[0].get("image_size", 69)),
        }
        if catalog is None:  # the folder's listing is the input: a new file means a new run
            if not Path(images).is_dir():
                raise InputError(f"--images {images} is not a folder of cutouts")
            listing = "\n".join(f"{p.name}:{p.stat().st_size}" for p in _list_image_files(Path(images)))
            identity = {"files_sha256": hashlib.sha256(listing.encode()).hexdigest()}
        else:
            identity = {}
        make_plan = lambda: _plan_from_images(Path(images), catalog)  # noqa: E731

    fingerprint = {
        "models": [{"task": c["task"], "model_id": c.get("model_id")} for c in cards],
        "source": source,
        "identity": identity,
        "catalog": (str(Path(catalog).resolve()), _sha256_file(Path(catalog))) if catalog else None,
        "precision": precision,
        "mc_dropout": int(mc_dropout),
        "seed": int(seed) if mc_dropout else 0,
        "shard_size": int(shard_size),
    }
    run_id = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
    parts = parts_dir(out)
    if _existing_run_id(out) == run_id:
        if parts.exists():  # killed after the merge, before the clean-up
            shutil.rmtree(parts, ignore_errors=True)
        return out

    # --- the plan (fixed once; a restart reuses it) -----------------------------------------
    plan_json = parts / "plan.json"
    if plan_json.exists():
        old = json.loads(plan_json.read_text())
        if old.get("run_id") != run_id:
            raise InputError(
                f"{parts} holds an unfinished run with other models, input or options "
                f"(run {old.get('run_id')}, this one {run_id}); delete {parts} to start afresh "
                "or choose another --out"
            )
        n_rows, n_shards = int(old["n_rows"]), int(old["n_shards"])
    else:
        parts.mkdir(parents=True, exist_ok=True)
        plan = make_plan()
        if store is not None:
            # Store order (image_index) makes every shard a contiguous, chunk-aligned Zarr read
            plan = plan.sort_values("image_index", kind="stable").reset_index(drop=True)
            plan.loc[plan["reject_reason"] != "", "image_index"] = -1
        n_rows = len(plan)
        if n_rows == 0:
            raise InputError(f"no galaxies to classify in {store or images}")
        n_shards = max(1, -(-n_rows // int(shard_size)))
        table = pa.Table.from_pandas(plan, preserve_index=False)
        tmp = parts / "plan.parquet.tmp"
        pq.write_table(table, tmp, row_group_size=int(shard_size))
        if pq.ParquetFile(tmp).num_row_groups != n_shards:  # row group k is shard k
            raise RuntimeError(f"plan {tmp} was not split into {n_shards} row groups")
        os.replace(tmp, parts / "plan.parquet")
        _atomic_write_text(
            plan_json,
            json.dumps({"run_id": run_id, "n_rows": n_rows, "n_shards": n_shards,
                        "fingerprint": fingerprint}, indent=2, default=str),
        )
    for stale in parts.glob("*.tmp"):
        stale.unlink(missing_ok=True)
    pending = [k for k in range(n_shards) if not (parts / f"shard-{k:06d}.parquet").exists()]

    run = {
        "models": [{"path": c["path"], "task": c["task"]} for c in cards],
        "parts_dir": str(parts.resolve()),
        "source": source,
        "precision": precision,
        "mc_dropout": int(mc_dropout),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "device": device,
        "num_threads": num_threads,
        "reader_threads": reader_threads,
    }
    done_rows = n_rows - sum(_shard_len(k, n_rows, int(shard_size)) for k in pending)

    columns = [TextColumn("[bold]predict[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("galaxies"),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False, unit="galaxies") as bar:
        task_id = bar.add_task("predict", total=n_rows, completed=done_rows)

        def advance(n: int) -> None:
            bar.advance(task_id, n)

        if pending:
            if engine == "local":
                _run_local(run, pending, advance)
            else:
                _run_ray(run, pending, advance, address, num_workers)

    missing = [k for k in range(n_shards) if not (parts / f"shard-{k:06d}.parquet").exists()]
    if missing:  # pragma: no cover - an engine that returned without finishing
        raise RuntimeError(f"shards {missing[:10]} were not written; run again to resume")
    provenance = {
        "format": CATALOGUE_FORMAT,
        "version": CATALOGUE_VERSION,
        "run_id": run_id,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": [
            {k: c.get(k) for k in ("task", "model_id", "path", "survey", "architecture",
                                   "n_train", "train_hash", "experiment")}
            for c in cards
        ],
        "input": source,
        "catalog": fingerprint["catalog"],
        "precision": precision,
        "mc_dropout": int(mc_dropout),
        "seed": int(seed),
        "engine": engine,
        "shard_size": int(shard_size),
    }
    _merge(run, n_shards, out, kind, provenance)
    shutil.rmtree(parts, ignore_errors=True)
    return out


def _shard_len(k: int, n_rows: int, shard_size: int) -> int:
    return max(0, min(shard_size, n_rows - k * shard_size))
