"""Fetch cutouts for a catalogue of RA/Dec from the public cutout services.

* SDSS SkyServer image cutout service (JPEG colour composites, R,G,B = i,r,g) for survey "sdss".
* Legacy Survey cutout service (FITS cubes with BAND0.. in the header) for "des" (layer des-dr1)
  and "decals" (layer ls-dr10): the layer is the Survey table's ``cutout_layer``.

Cutout size from R90: side = crop_factor (10) x R90 / pixel scale, at the survey's native pixel
scale, clamped to [min_size_px, max_size_px]; without R90 the side is ``default_size_px``. So the
downloaded image already spans ~10 x R90 and ingest's crop keeps all of it.

Robustness: a bounded thread pool (``concurrency`` requests at a time), a connect/read timeout and a
total deadline per request (a server trickling bytes cannot hang a worker), retries with
exponential backoff and jitter on timeouts, connection errors, 5xx/429 and invalid bodies, and
validation of every response before it is kept: a JPEG must decode completely, a FITS file must
open and hold a finite image of the requested shape; an HTML error page is never saved as an image.
Files are written to ``<name>.part`` and renamed into place only once valid, so a file that exists
under its final name is complete. Re-running skips those (resume).

Outputs in ``out``: the cutouts, ``catalog.csv`` (the input catalogue in the tidy convention plus
``file`` and ``pixel_scale_arcsec`` columns, ready for ``morphtransfer ingest --format tidy``) and
``download_failures.csv`` (id, url, reason) for what could not be fetched.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from morphtransfer.errors import InputError
from morphtransfer.surveys import Survey, get_survey

SERVICE_URLS = {
    # SkyServer DR17 ImgCutout: scale in arcsec/pixel, width/height in pixels (max 2048).
    "sdss_skyserver": "https://skyserver.sdss.org/dr17/SkyServerWS/ImgCutout/getjpeg",
    # Legacy Survey viewer: pixscale arcsec/pixel, size in pixels (max 512 for FITS cutouts).
    "legacy_survey": "https://www.legacysurvey.org/viewer/fits-cutout",
}
MAX_SIZE_PX = {"sdss_skyserver": 2048, "legacy_survey": 512}
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
USER_AGENT = "morphtransfer-download/0.1 (+https://github.com/; galaxy morphology research)"


class InvalidResponse(ValueError):
    """The body is not a valid cutout (HTML error page, truncated, undecodable, wrong shape)."""


@dataclass
class DownloadResult:
    out: Path
    catalog_path: Path
    n_ok: int = 0
    n_skipped: int = 0  # already on disk (resume)
    n_failed: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)


def cutout_size_px(
    r90_arcsec: float | None,
    pixel_scale_arcsec: float,
    crop_factor: float = 10.0,
    default_size_px: int = 256,
    min_size_px: int = 64,
    max_size_px: int = 512,
) -> int:
    """Side in pixels of a cutout spanning crop_factor x R90 at the given pixel scale."""
    if r90_arcsec is None or not np.isfinite(r90_arcsec) or r90_arcsec <= 0:
        return int(default_size_px)
    side = int(np.ceil(crop_factor * float(r90_arcsec) / pixel_scale_arcsec))
    return int(min(max(side, min_size_px), max_size_px))


def cutout_url(
    survey: Survey, ra: float, dec: float, size_px: int, base_url: str | None = None
) -> tuple[str, str]:
    """(url, file suffix) of one cutout at the survey's native pixel scale."""
    service = survey.cutout_service
    if service == "desaccess":
        raise InputError(f"survey {survey.name!r}: DESaccess cutouts need a DES account, so "
                         "morphtransfer does not download them; make them at "
                         "https://des.ncsa.illinois.edu/desaccess (Lupton PNGs, colours 'irg') "
                         "and read them with `morphtransfer ingest`")
    base = base_url or SERVICE_URLS.get(service)
    if base is None:
        raise InputError(f"survey {survey.name!r} has no known cutout service ({service!r})")
    if service == "sdss_skyserver":
        q = {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "scale": f"{survey.pixel_scale_arcsec:g}",
             "width": size_px, "height": size_px}
        return f"{base}?{urlencode(q)}", ".jpeg"
    if service == "legacy_survey":
        q = {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "layer": survey.cutout_layer,
             "pixscale": f"{survey.pixel_scale_arcsec:g}", "size": size_px,
             "bands": "".join(survey.band_names)}
        return f"{base}?{urlencode(q)}", ".fits"
    raise InputError(f"survey {survey.name!r}: unsupported cutout service {service!r}")


# --- validation -------------------------------------------------------------------------------
def _looks_like_html(body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    starts = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")
    return head.startswith(starts) or b"<html" in head


def validate_jpeg(body: bytes, expected_size: int | None = None) -> None:
    if _looks_like_html(body):
        raise InvalidResponse("an HTML page, not a JPEG (the service returned an error page)")
    if not body.startswith(b"\xff\xd8"):
        raise InvalidResponse(f"not a JPEG (starts with {body[:8]!r})")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as im:
            im.load()  # raises on a truncated stream (LOAD_TRUNCATED_IMAGES is off)
            size = im.size
    except Exception as exc:
        raise InvalidResponse(f"JPEG does not decode ({type(exc).__name__}: {exc})") from exc
    if not body.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidResponse("JPEG has no end-of-image marker (truncated)")
    if expected_size and size != (expected_size, expected_size):
        raise InvalidResponse(f"JPEG is {size}, expected {expected_size} x {expected_size}")


def validate_fits(
    body: bytes, n_bands: int | None = None, expected_size: int | None = None
) -> None:
    if _looks_like_html(body):
        raise InvalidResponse("an HTML page, not FITS (the service returned an error page)")
    if not body.startswith(b"SIMPLE  ="):
        raise InvalidResponse(f"not a FITS file (starts with {body[:12]!r})")
    if len(body) % 2880:
        raise InvalidResponse(f"FITS length {len(body)} is not a multiple of 2880 (truncated)")
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(body), memmap=False) as hdul:
            hdu = next(h for h in hdul if h.is_image and h.data is not None)
            data = np.asarray(hdu.data)
    except StopIteration:
        raise InvalidResponse("FITS file holds no image") from None
    except Exception as exc:
        raise InvalidResponse(f"FITS does not open ({type(exc).__name__}: {exc})") from exc
    if n_bands is not None and (data.ndim != 3 or data.shape[0] != n_bands):
        raise InvalidResponse(f"FITS image of shape {data.shape}, expected {n_bands} bands")
    if expected_size and data.shape[-2:] != (expected_size, expected_size):
        raise InvalidResponse(f"FITS image is {data.shape[-2:]}, expected {expected_size} square")


# --- fetching ---------------------------------------------------------------------------------
_local = threading.local()


def _session():
    import requests

    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        s.headers["User-Agent"] = USER_AGENT
        _local.session = s
    return s


def fetch(
    url: str,
    validate,
    timeout_s: float = 30.0,
    retries: int = 4,
    backoff_s: float = 1.0,
    max_bytes: int = 64 * 2**20,
) -> bytes:
    """GET url with a deadline, retries and backoff; returns a body that passed ``validate``."""
    import requests

    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            # exponential backoff with jitter, so concurrent retries do not arrive together
            time.sleep(backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
        t0 = time.monotonic()
        try:
            with _session().get(url, timeout=(timeout_s, timeout_s), stream=True) as r:
                if r.status_code != 200:
                    last = f"HTTP {r.status_code}"
                    if r.status_code in RETRY_STATUS:
                        continue
                    raise InvalidResponse(f"{last} (not retried)")
                chunks, n = [], 0
                for chunk in r.iter_content(65536):
                    chunks.append(chunk)
                    n += len(chunk)
                    if n > max_bytes:
                        raise InvalidResponse(f"body larger than {max_bytes} bytes")
                    if time.monotonic() - t0 > timeout_s:
                        raise TimeoutError(f"body not complete after {timeout_s:g} s")
                body = b"".join(chunks)
                expected = r.headers.get("Content-Length")
                if expected is not None and int(expected) != len(body):
                    last = f"truncated body ({len(body)} of {expected} bytes)"
                    continue
            validate(body)
            return body
        except InvalidResponse as exc:
            last = str(exc)
            if "not retried" in last:
                break
        except (requests.RequestException, TimeoutError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
    raise InvalidResponse(f"{url}: failed after {retries + 1} attempts; last error: {last}")


def _write_atomic(path: Path, body: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(body)
    os.replace(tmp, path)


def _safe_name(gid: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "+-._" else "_" for ch in str(gid))


def download(
    catalog,
    out: str | os.PathLike,
    survey: str = "sdss",
    format: str = "tidy",
    concurrency: int = 4,
    timeout_s: float = 30.0,
    retries: int = 4,
    backoff_s: float = 1.0,
    crop_factor: float = 10.0,
    default_size_px: int = 256,
    min_size_px: int = 64,
    base_url: str | None = None,
    r90_column: str = "r90_arcsec",
    limit: int | None = None,
    progress: bool = True,
) -> DownloadResult:
    """Download one cutout per catalogue row (needs id, ra, dec; R90 optional) into ``out``.

    catalog: a catalogue file read with ``format`` (gz2, gzdecals, tidy, ...) or a DataFrame.
    survey: sdss (SkyServer JPEG) | des | decals (Legacy Survey FITS, layer from the Survey table).
    base_url: replace the service address (a mirror, or a local test server).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from morphtransfer.progress import Progress

    from morphtransfer.data.catalogs import load_catalog

    t0 = time.perf_counter()
    surv = get_survey(survey)
    cat = catalog.copy() if isinstance(catalog, pd.DataFrame) else load_catalog(catalog, format)
    src = "<DataFrame>" if isinstance(catalog, pd.DataFrame) else str(catalog)
    missing = [c for c in ("id", "ra", "dec") if c not in cat.columns]
    if missing:
        raise InputError(f"catalogue {src} lacks column(s) {missing}; download needs id, ra, dec")
    cat = cat.reset_index(drop=True)
    if limit is not None:
        cat = cat.iloc[: int(limit)].reset_index(drop=True)
    cat["id"] = cat["id"].astype(str)
    bad_pos = ~(np.isfinite(pd.to_numeric(cat["ra"], errors="coerce"))
                & np.isfinite(pd.to_numeric(cat["dec"], errors="coerce")))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.part"):
        stale.unlink()  # leftovers of an interrupted run: never valid files

    max_px = MAX_SIZE_PX.get(surv.cutout_service, 512)
    r90 = (pd.to_numeric(cat[r90_column], errors="coerce").to_numpy(float)
           if r90_column in cat.columns else np.full(len(cat), np.nan))
    files, sizes, jobs, failures = [], [], [], []
    result = DownloadResult(out=out_dir, catalog_path=out_dir / "catalog.csv")
    seen: set[str] = set()
    for i, row in cat.iterrows():
        gid = row["id"]
        size = cutout_size_px(r90[i], surv.pixel_scale_arcsec, crop_factor, default_size_px,
                              min_size_px, max_px)
        sizes.append(size)
        if bad_pos[i] or gid in seen:
            why = "duplicate id" if gid in seen else "ra/dec missing or not finite"
            failures.append({"id": gid, "url": "", "reason": why})
            files.append("")
            continue
        seen.add(gid)
        url, suffix = cutout_url(surv, float(row["ra"]), float(row["dec"]), size, base_url)
        name = _safe_name(gid) + suffix
        files.append(name)
        if (out_dir / name).exists():
            result.n_skipped += 1
            continue
        jobs.append((gid, url, name, size))

    def one(job):
        gid, url, name, size = job
        if name.endswith(".fits"):
            def check(b):
                validate_fits(b, len(surv.bands), size)
        else:
            def check(b):
                validate_jpeg(b, size)
        body = fetch(url, check, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        _write_atomic(out_dir / name, body)

    columns = [TextColumn("[bold]download[/]"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, label="download", unit="cutouts") as bar, \
            ThreadPoolExecutor(max_workers=max(1, int(concurrency))) as pool:
        task_id = bar.add_task("cutouts", total=len(jobs))
        futs = {pool.submit(one, j): j for j in jobs}
        try:
            for fut in as_completed(futs):
                gid, url, name, _ = futs[fut]
                try:
                    fut.result()
                    result.n_ok += 1
                except Exception as exc:
                    failures.append({"id": gid, "url": url, "reason": str(exc)})
                bar.advance(task_id)
        except BaseException:
            for f in futs:
                f.cancel()
            raise
        finally:
            _write_outputs(cat, files, sizes, surv, failures, out_dir, result)
    result.n_failed = len(failures)
    result.failures = failures
    result.seconds = time.perf_counter() - t0
    return result


def _write_outputs(cat, files, sizes, surv, failures, out_dir: Path, result) -> None:
    """catalog.csv lists the rows whose file is on disk; failures go to download_failures.csv."""
    tidy = cat.copy()
    tidy["file"] = files
    tidy["cutout_size_px"] = sizes
    tidy["pixel_scale_arcsec"] = surv.pixel_scale_arcsec
    tidy["survey"] = surv.name
    on_disk = np.array([bool(f) and (out_dir / f).exists() for f in files], dtype=bool)
    buf = tidy[on_disk].to_csv(index=False).encode()
    tmp = result.catalog_path.with_name("catalog.csv.part")
    tmp.write_bytes(buf)
    os.replace(tmp, result.catalog_path)
    fail_path = out_dir / "download_failures.csv"
    pd.DataFrame(failures, columns=["id", "url", "reason"]).to_csv(fail_path, index=False)
