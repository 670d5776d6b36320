"""simulate(): the built-in survey pair, written as one Store per survey, streaming and resumable.

Every galaxy is a pure function of (seed, galaxy index, survey): its intrinsic properties come from
stream 0 of its own generator (its oval and its field of stars and galaxies, field.py, from streams
of their own), its image noise, PSF and volunteers from a stream per survey
(population.galaxy_rng). So batches can be rendered by any worker in any order, a galaxy missing
from one store can be re-rendered for that store alone, and the same seed gives the same
catalogues and images. Results are committed in galaxy-index order, so the stores' image_index
order is the same whether a run was interrupted or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import multiprocessing as mp
import numpy as np
import pandas as pd

from morphtransfer.data.store import IMAGE_SIZE, StoreWriter
from morphtransfer.errors import InputError
from morphtransfer.simulate.field import galaxy_field
from morphtransfer.simulate.population import draw_galaxy, galaxy_id, galaxy_rng
from morphtransfer.simulate.render import MAX_STAMP_PIXELS, observe
from morphtransfer.simulate.volunteers import (
    VolunteerModel,
    draw_n_votes,
    draw_votes,
    vote_probabilities,
)
from morphtransfer.surveys import get_survey
from morphtransfer.tasks import add_fractions

# 9: Petrosian radii in circular apertures on the projected galaxy (population.py): inclined
# disks framed and sized as the SDSS pipeline measures them;
# 8: volunteers who see bars as often as the real GZ2 Stripe 82 ones (volunteers.py, bar_vis50);
# 7: field stars, galaxies and companions in every cutout (field.py); 6: ovals and lenses in disks
# (population.py); 5: stronger, longer bars
SIMULATOR_VERSION = 9
DEFAULT_SURVEYS = ("sdss", "des")
# Stable per-survey random streams (never derived from process order or Python's salted hash).
# des_desaccess shares des's: the same DES observations (PSF, noise, votes), served another way.
_SURVEY_STREAMS = {"sdss": 1, "des": 2, "decals": 3, "des_desaccess": 2}


def survey_stream(name: str) -> int:
    return _SURVEY_STREAMS.get(name, 1000 + zlib.crc32(name.encode()) % 100000)


def _limit_threads():
    """One BLAS/OpenMP thread: the pool already uses every core, and oversubscription made the
    small matrix products 20x slower on a shared 2-core machine. Returns the limiter (a context
    manager that restores the caller's settings on exit)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()


def simulate_galaxy(
    seed: int,
    index: int,
    surveys: tuple[str, ...] = DEFAULT_SURVEYS,
    volunteers: VolunteerModel | None = None,
    max_pixels: int = MAX_STAMP_PIXELS,
) -> dict[str, tuple[dict, np.ndarray]]:
    """One galaxy in each of ``surveys``: {survey: (catalogue row without fractions, image)}."""
    model = volunteers or VolunteerModel()
    g = draw_galaxy(seed, index)
    truth = g.truth_row()
    # the sky around it, the same for every survey (each renders what its depth reaches)
    fld = galaxy_field(seed, index, g.r90_arcsec)
    out = {}
    for name in surveys:
        sv = get_survey(name)
        stream = survey_stream(sv.name)
        obs = observe(g, sv, galaxy_rng(seed, index, stream), max_pixels=max_pixels, field=fld)
        counts = volunteer_counts(obs, sv, seed, index, model)
        row = {
            "id": g.id,
            "ra": g.ra,
            "dec": g.dec,
            "survey": sv.name,
            "redshift": g.redshift,
            "mag_r": g.mag_r,
            "r90_arcsec": g.r90_arcsec,
            "r50_arcsec": g.r50_arcsec,
        }
        row.update(obs.catalog_row())
        row.update({k: int(v[0]) for k, v in counts.items()})
        row.update(truth)
        row.update(fld.summary_row())
        out[sv.name] = (row, obs.images)
    return out


def volunteer_counts(obs, survey, seed: int, index: int, model: VolunteerModel) -> dict:
    """The volunteers' vote counts for galaxy ``index`` as ``survey`` showed it (``obs``), from
    the galaxy's own volunteer random stream: {"<question>_<answer>_count": array of 1}."""
    vrng = galaxy_rng(seed, index, survey_stream(survey.name) + 1_000_000)
    n_votes = draw_n_votes(survey.votes_min, survey.votes_max, vrng)
    vis = obs.visibility
    probs = vote_probabilities(vis["vis_arms"], vis["vis_bar"], vis["vis_axis_ratio"], model, rng=vrng)
    return draw_votes(probs, n_votes, model, vrng)


VISIBILITY_COLUMNS = ("vis_arms", "vis_bar", "vis_axis_ratio")


def revote(catalog: pd.DataFrame, survey: str, seed: int, model: VolunteerModel) -> pd.DataFrame:
    """A simulated ``survey`` catalogue (simulation ``seed``) with every galaxy's votes drawn
    again by ``model``, from the visibilities the catalogue holds: no image is rendered. Each
    galaxy's votes come from its own volunteer stream, so the simulation's own volunteers give
    back its stored counts, and a change of the bar question (drawn last) leaves Q1 and Q2 as they
    are. Used to calibrate the volunteers (``benchmarks/volunteer_calibration.py``)."""
    missing = [c for c in ("id", *VISIBILITY_COLUMNS) if c not in catalog.columns]
    if missing:
        raise InputError(
            f"the {survey} catalogue lacks {missing}: only a simulated Store's catalogue can be "
            "voted again"
        )
    sv = get_survey(survey)
    rows = []
    for gid, *vis in catalog[["id", *VISIBILITY_COLUMNS]].itertuples(index=False):
        head, _, number = str(gid).rpartition("-")
        if head != "sim" or not number.isdigit():
            raise InputError(f"galaxy {gid!r} is not a simulated galaxy id (sim-NNNNNNNNN)")
        seen = SimpleNamespace(visibility=dict(zip(VISIBILITY_COLUMNS, vis)))  # as observe() gives
        rows.append({k: int(v[0]) for k, v in volunteer_counts(seen, sv, seed, int(number), model).items()})
    counts = pd.DataFrame(rows, index=catalog.index)
    return add_fractions(catalog.assign(**counts))


def _render_batch(job):
    seed, indices, needs, vol_params, max_pixels = job
    model = VolunteerModel(**vol_params)
    rows: dict[str, list] = {}
    imgs: dict[str, list] = {}
    for index, surveys in zip(indices, needs):
        res = simulate_galaxy(seed, index, surveys, model, max_pixels)
        for s, (row, img) in res.items():
            rows.setdefault(s, []).append(row)
            imgs.setdefault(s, []).append(img)
    return {s: (rows[s], np.stack(imgs[s])) for s in rows}


def _worker_init():
    # Ctrl-C is the parent's to handle: it commits what finished and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_threads()


@dataclass
class SimulationResult:
    out: Path
    stores: dict[str, Path]
    n: int
    seed: int
    n_rendered: dict[str, int]
    seconds: float
    summary: pd.DataFrame | None = None
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _check_existing(path: Path, meta: dict) -> None:
    p = path / "store.json"
    if not p.exists():
        return
    old = json.loads(p.read_text()).get("simulation")
    if old is None:
        raise InputError(
            f"{path} is a Store that the simulator did not write; choose another --out folder"
        )
    for key in ("seed", "simulator_version", "volunteers", "max_pixels", "surveys"):
        if old.get(key) != meta.get(key):
            raise InputError(
                f"{path} was simulated with {key}={old.get(key)!r}, not {meta.get(key)!r}; "
                "resume with the same settings or write to a new --out folder"
            )


def _noop() -> None:
    return None


def _run(pool, out, meta, indices, survey_objs, seed, model, max_pixels, batch_size,
         commit_every, progress):
    """Open (or resume) the Stores, render what is missing, commit in galaxy order."""
    names = tuple(sv.name for sv in survey_objs)
    if pool is not None:
        # fork every worker now, before any Store is opened (see simulate)
        for f in [pool.submit(_noop) for _ in range(pool._max_workers)]:
            f.result()
    writers: dict[str, StoreWriter] = {}
    for sv in survey_objs:
        path = out / sv.name
        _check_existing(path, meta)
        writers[sv.name] = StoreWriter(
            path, survey=sv.name, bands=list(sv.band_names), image_size=IMAGE_SIZE,
            extra_meta={"simulation": {**meta, "n_requested": len(indices)}},
        )
    done = {s: w.existing_ids for s, w in writers.items()}
    todo: list[tuple[int, tuple[str, ...]]] = []
    for i in indices:
        gid = galaxy_id(i)
        need = tuple(s for s in names if gid not in done[s])
        if need:
            todo.append((i, need))
    del done
    jobs = (
        (
            seed,
            [i for i, _ in todo[k : k + batch_size]],
            [need for _, need in todo[k : k + batch_size]],
            model.as_dict(),
            max_pixels,
        )
        for k in range(0, len(todo), batch_size)
    )
    t0 = time.perf_counter()
    n_rendered = {s: 0 for s in names}
    buffers: dict[str, list] = {s: [] for s in names}

    def flush():
        for s, items in buffers.items():
            if not items:
                continue
            rows = add_fractions(pd.DataFrame([r for part, _ in items for r in part]))
            imgs = np.concatenate([im for _, im in items])
            writers[s].append(rows, imgs)
            n_rendered[s] += len(rows)
            buffers[s] = []

    def take(result):
        for s, (rows, imgs) in result.items():
            buffers[s].append((rows, imgs))
        if max(sum(len(r) for r, _ in b) for b in buffers.values()) >= commit_every:
            flush()

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from morphtransfer.progress import Progress

    prog = Progress(
        TextColumn("simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("galaxies"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        unit="galaxies",
    )
    with prog:
        task = prog.add_task("simulate", total=len(indices), completed=len(indices) - len(todo))
        try:
            if pool is None:
                with _limit_threads():
                    for job in jobs:
                        take(_render_batch(job))
                        prog.advance(task, len(job[1]))
            else:
                # bounded window of batches in flight, results taken in submission order:
                # memory stays flat and commits are deterministic
                pending: deque = deque()
                max_in_flight = 2 * pool._max_workers + 1
                for job in jobs:
                    pending.append((pool.submit(_render_batch, job), len(job[1])))
                    if len(pending) >= max_in_flight:
                        break
                while pending:
                    fut, k = pending.popleft()
                    take(fut.result())
                    prog.advance(task, k)
                    nxt = next(jobs, None)
                    if nxt is not None:
                        pending.append((pool.submit(_render_batch, nxt), len(nxt[1])))
        finally:
            flush()  # whatever finished is committed, also when interrupted
    return n_rendered, t0


def simulate(
    n: int | None,
    seed: int = 0,
    out: str | os.PathLike = "data/mock",
    workers: int = 2,
    surveys: tuple[str, ...] | list[str] = DEFAULT_SURVEYS,
    batch_size: int = 32,
    commit_every: int = 512,
    volunteers: VolunteerModel | None = None,
    max_pixels: int = MAX_STAMP_PIXELS,
    progress: bool = True,
    report: bool = True,
    gz2_table: str | os.PathLike | None = None,
    indices: list[int] | None = None,
) -> SimulationResult:
    """Simulate ``n`` galaxies seen by each survey, into ``out/<survey>`` Stores.

    indices: the population indices to render instead of 0..n-1 (n None or len(indices)): a
    sub-sample of the population, e.g. only its face-on disks (``draw_galaxy`` is cheap, the
    rendering is not). Each galaxy is the one a full simulation with this seed would hold.

    Streaming: batches of ``batch_size`` galaxies are rendered by ``workers`` processes (0 or 1:
    in this process), committed every ``commit_every`` galaxies, so memory does not grow with n.
    Resumable: galaxies already committed in every store are skipped; one present in only some
    stores is rendered again for the others (deterministically identical). With ``report``, also
    writes ``out/gallery.png``, ``out/summary.json`` and the comparison with GZ2
    (``out/vote_comparison.{json,png}``) - see simulate/summary.py.
    """
    if indices is not None:
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
            raise InputError("indices must be distinct population indices >= 0, at least one")
        if n is not None and n != len(indices):
            raise InputError(f"n={n!r} but {len(indices)} indices; pass n=None with indices")
        n = len(indices)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise InputError(f"--n must be a positive number of galaxies, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"--seed must be an integer >= 0, got {seed!r}")
    if workers < 0:
        raise InputError(f"--workers must be >= 0, got {workers}")
    if batch_size <= 0 or commit_every <= 0:
        raise InputError("batch_size and commit_every must be positive")
    survey_objs = [get_survey(s) for s in surveys]
    names = tuple(s.name for s in survey_objs)
    if len(set(names)) != len(names):
        raise InputError(f"surveys {list(surveys)} repeat a survey")
    model = volunteers or VolunteerModel()
    out = Path(out)
    meta = {
        "seed": int(seed),
        "simulator_version": SIMULATOR_VERSION,
        "volunteers": model.as_dict(),
        "max_pixels": int(max_pixels),
        "surveys": list(names),
    }
    # Workers are forked before any Store is opened (zarr and pyarrow start threads; a fork
    # after that could inherit a held lock). Fork, not spawn: spawn re-imports the caller's
    # __main__, which breaks scripts without an ``if __name__ == "__main__"`` guard.
    pool = None
    if workers > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
    try:
        order = indices if indices is not None else range(int(n))
        n_rendered, t0 = _run(pool, out, meta, order, survey_objs, int(seed), model,
                              int(max_pixels), batch_size, commit_every, progress)
    except BaseException:
        if pool is not None:  # interrupted or failed: drop queued batches, do not wait
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    if pool is not None:
        pool.shutdown(wait=True)
    seconds = time.perf_counter() - t0
    result = SimulationResult(
        out=out,
        stores={s: out / s for s in names},
        n=int(n),
        seed=int(seed),
        n_rendered=n_rendered,
        seconds=seconds,
    )
    if report:
        from morphtransfer.simulate.summary import write_report

        write_report(result, gz2_table=gz2_table)
    return result
