"""The Store: where every source of galaxies ends (simulator, downloader, your own cutouts).

On disk::

    STORE/
      store.json                 format, version, survey, bands, image shape, package version
      images.zarr/               float32 array (N, bands, 69, 69), chunked along N
      catalog/part-000000.parquet  catalogue rows, one file per committed append
      rejects.csv                galaxies that could not be ingested, with the reason

Commit order makes interruption safe: an append first writes its images, then atomically renames
its catalogue part into place. A row exists only when its image does; on reopening, images past the
last committed row (a crash mid-append) are trimmed away. Nothing committed is ever rewritten.

Required catalogue columns: ``id`` (string, unique) and ``image_index`` (row in ``images.zarr``,
assigned by the writer). Usual ones: ra, dec, survey, vote columns (see tasks.py), ``true_*`` truth
columns for simulated data, ``split``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from morphtransfer import __version__
from morphtransfer.errors import InputError

STORE_FORMAT = "morphtransfer-store"
STORE_VERSION = 1
IMAGE_SIZE = 69
CHUNK_GALAXIES = 256


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _catalog_parts(path: Path) -> list[Path]:
    return sorted((path / "catalog").glob("part-*.parquet"))


def _read_parts(parts: list[Path]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({"id": pd.Series([], dtype="string"), "image_index": []})
    tables = [pq.read_table(p) for p in parts]
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas()


class Store:
    """Read side of a Store: the catalogue as a DataFrame, images read in batches on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "store.json"
        if not meta_path.exists():
            raise InputError(
                f"{self.path} is not a morphtransfer Store (no store.json); create one with "
                "`morphtransfer simulate` or `morphtransfer ingest`"
            )
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != STORE_FORMAT:
            raise InputError(f"{meta_path} is not a morphtransfer Store file")
        self._catalog: pd.DataFrame | None = None
        self._images = None

    # --- metadata ------------------------------------------------------------------------
    @property
    def survey(self) -> str:
        return self.meta.get("survey", "")

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])  # type: ignore[return-value]

    # --- catalogue -------------------------------------------------------------------------
    @property
    def catalog(self) -> pd.DataFrame:
        """The whole catalogue (cached), ordered by image_index."""
        if self._catalog is None:
            cat = _read_parts(_catalog_parts(self.path))
            cat = cat.sort_values("image_index", kind="stable").reset_index(drop=True)
            self._catalog = cat
        return self._catalog

    def __len__(self) -> int:
        return len(self.catalog)

    def rejects(self) -> pd.DataFrame:
        p = self.path / "rejects.csv"
        if not p.exists():
            return pd.DataFrame(columns=["id", "file", "reason"])
        return pd.read_csv(p, dtype=str, keep_default_na=False)  # an id "nan" stays an id

    # --- images ----------------------------------------------------------------------------
    @property
    def images(self) -> zarr.Array:
        if self._images is None:
            self._images = zarr.open_array(self.path / "images.zarr", mode="r")
        return self._images

    def read_images(self, image_index) -> np.ndarray:
        """Images (n, bands, 69, 69) float32 for the given image_index values, in that order."""
        idx = np.asarray(image_index, dtype=np.int64)
        if idx.size == 0:
            return np.zeros((0, *self.image_shape), dtype=np.float32)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        lo, hi = int(sorted_idx[0]), int(sorted_idx[-1]) + 1
        if hi - lo <= 2 * idx.size + CHUNK_GALAXIES:
            # dense enough: one contiguous read is faster than a fancy-index read
            block = np.asarray(self.images[lo:hi])
            out_sorted = block[sorted_idx - lo]
        else:
            out_sorted = np.asarray(self.images.oindex[sorted_idx])
        out = np.empty_like(out_sorted)
        out[order] = out_sorted
        return out.astype(np.float32, copy=False)

    def iter_batches(
        self, batch_size: int = 1024, rows: pd.DataFrame | None = None
    ) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        """Yield (catalogue rows, images) in batches; never holds more than one batch of images."""
        cat = self.catalog if rows is None else rows
        for start in range(0, len(cat), batch_size):
            part = cat.iloc[start : start + batch_size]
            yield part, self.read_images(part["image_index"].to_numpy())

    # --- provenance ------------------------------------------------------------------------
    def content_hash(self) -> str:
        """sha256 over the catalogue's ids and every image's bytes, in image_index order."""
        h = hashlib.sha256()
        h.update(json.dumps(self.meta.get("bands")).encode())
        for part, imgs in self.iter_batches(CHUNK_GALAXIES * 4):
            h.update("\n".join(part["id"].astype(str)).encode())
            h.update(np.ascontiguousarray(imgs, dtype=np.float32).tobytes())
        return h.hexdigest()

    def subset_hash(self, rows: pd.DataFrame, label_column: str | None = None) -> str:
        """sha256 of a subset (ids, labels if given, images): the training-set hash of a model card."""
        h = hashlib.sha256()
        h.update("\n".join(rows["id"].astype(str)).encode())
        if label_column is not None:
            h.update(rows[label_column].to_numpy().astype("int64").tobytes())
        for _, imgs in self.iter_batches(CHUNK_GALAXIES * 4, rows):
            h.update(np.ascontiguousarray(imgs, dtype=np.float32).tobytes())
        return h.hexdigest()


class StoreWriter:
    """Append-only, crash-safe writer. Re-opening an existing Store resumes it.

    >>> w = StoreWriter("data/mock/des", survey="des", bands=["g", "r", "i"])
    >>> w.append(rows_dataframe, images_array)   # rows need an "id" column
    """

    def __init__(
        self,
        path: str | os.PathLike,
        survey: str,
        bands: list[str] | tuple[str, ...],
        image_size: int = IMAGE_SIZE,
        extra_meta: dict | None = None,
    ):
        self.path = Path(path)
        self.bands = list(bands)
        shape = (len(self.bands), image_size, image_size)
        meta_path = self.path / "store.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != STORE_FORMAT:
                raise InputError(f"{self.path} exists and is not a morphtransfer Store")
            if list(meta["bands"]) != self.bands or tuple(meta["image_shape"]) != shape:
                raise InputError(
                    f"{self.path} is a Store of bands {meta['bands']} and images "
                    f"{meta['image_shape']}, not {self.bands} and {list(shape)}; "
                    "write to a new --out folder"
                )
            if survey and meta.get("survey") and meta["survey"] != survey:
                raise InputError(
                    f"{self.path} holds survey {meta['survey']!r}, not {survey!r}; use a new folder"
                )
            self.meta = meta
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.meta = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "survey": survey,
                "bands": self.bands,
                "image_shape": list(shape),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "package_version": __version__,
            }
        if extra_meta:
            self.meta.update(extra_meta)
        (self.path / "catalog").mkdir(exist_ok=True)
        _atomic_write_bytes(meta_path, json.dumps(self.meta, indent=2).encode())
        self.images = zarr.open_array(
            self.path / "images.zarr",
            mode="a",
            shape=(0, *shape),
            chunks=(CHUNK_GALAXIES, *shape),
            dtype="float32",
        )
        parts = _catalog_parts(self.path)
        for stale in (self.path / "catalog").glob("*.tmp"):
            stale.unlink()
        existing = _read_parts(parts)
        self._ids: set[str] = set(existing["id"].astype(str))
        self.n = len(existing)
        self._next_part = (int(parts[-1].stem.split("-")[1]) + 1) if parts else 0
        if self.images.shape[0] != self.n:  # images of an append that never committed
            self.images.resize((self.n, *shape))

    @property
    def existing_ids(self) -> set[str]:
        return set(self._ids)

    def __len__(self) -> int:
        return self.n

    def append(self, rows: pd.DataFrame, images: np.ndarray) -> None:
        """Commit rows and their images (n, bands, 69, 69). Ids must be new and unique."""
        if len(rows) != len(images):
            raise ValueError(f"{len(rows)} catalogue rows but {len(images)} images")
        if len(rows) == 0:
            return
        if "id" not in rows.columns:
            raise InputError("catalogue rows need an 'id' column")
        images = np.asarray(images, dtype=np.float32)
        if images.shape[1:] != tuple(self.images.shape[1:]):
            raise InputError(
                f"images of shape {images.shape[1:]} do not fit this Store "
                f"({tuple(self.images.shape[1:])})"
            )
        ids = rows["id"].astype(str)
        dup_in_batch = ids[ids.duplicated()].tolist()
        dup_old = [i for i in ids if i in self._ids]
        if dup_in_batch or dup_old:
            raise InputError(
                f"duplicate galaxy ids {sorted(set(dup_in_batch + dup_old))[:10]}: every id must be "
                "unique in a Store; remove the duplicates or pass them to the rejects table"
            )
        if not np.isfinite(images).all():
            bad = ids[~np.isfinite(images).reshape(len(images), -1).all(axis=1)].tolist()
            raise InputError(f"galaxies {bad[:10]} have NaN/inf pixels; reject them before writing")
        n0, k = self.n, len(rows)
        self.images.resize((n0 + k, *self.images.shape[1:]))
        self.images[n0 : n0 + k] = images
        out = rows.copy()
        out["id"] = ids.to_numpy()
        out["image_index"] = np.arange(n0, n0 + k, dtype=np.int64)
        table = pa.Table.from_pandas(out, preserve_index=False)
        final = self.path / "catalog" / f"part-{self._next_part:06d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # the commit point
        self._next_part += 1
        self.n += k
        self._ids.update(ids)

    def reject(self, records: list[dict]) -> None:
        """Append per-galaxy problems (dicts with id, file, reason) to rejects.csv."""
        if not records:
            return
        path = self.path / "rejects.csv"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "file", "reason"], extrasaction="ignore")
            if new:
                w.writeheader()
            for r in records:
                w.writerow({"id": r.get("id", ""), "file": r.get("file", ""), "reason": r["reason"]})

    def store(self) -> Store:
        return Store(self.path)


def open_store(path: str | os.PathLike) -> Store:
    return Store(path)
