"""Throughput and memory of the simulator: galaxies per second, each rendered in both surveys and
three bands, voted on and written to the two Stores, with the worker pool.

    python benchmarks/simulate_speed.py --n 2000 --workers 2

Prints one JSON line. Peak memory is sampled every 0.2 s over the simulating process and its
workers (RSS summed, an upper bound, and PSS, which shares the forked workers' common pages);
streaming keeps it flat in n (``--check-growth`` runs n/4 first and reports both peaks, so the
growth from n/4 to n can be read off).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tree_memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB summed over a process and its descendants. PSS shares copy-on-write
    pages of the forked workers fairly; RSS counts them once per process (an upper bound)."""
    rss = pss = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += float(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += float(line.split()[1]) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                stack += [int(k) for k in kids]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return rss, pss


def _run_once(n: int, workers: int, out: Path) -> dict:
    """Run in a fresh interpreter, sampling the memory of it and its workers every 0.2 s."""
    code = f"""
import json, time
from morphtransfer.simulate import simulate
t = time.perf_counter()
res = simulate({n}, seed=0, out={str(out)!r}, workers={workers}, progress=False, report=False)
print(json.dumps({{"wall_s": time.perf_counter() - t, "render_s": res.seconds}}))
"""
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0.0
    while proc.poll() is None:
        rss, pss = _tree_memory_mib(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"simulation failed with exit code {proc.returncode}")
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = json.loads(stdout.strip().splitlines()[-1])
    info["process_s"] = time.perf_counter() - t0
    # CPU of the interpreter and of its (reaped) workers
    info["cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    info["peak_rss_mib"], info["peak_pss_mib"] = peak_rss, peak_pss
    return info


_STREAMING_CODE = """
import json, sys, numpy as np
import morphtransfer.simulate.pipeline as pl
real, cache = pl._render_batch, {}
def fake(job):  # one real galaxy, copied: isolates the parent's streaming and Store writes
    seed, idx, needs, vol, mp = job
    if "r" not in cache:
        cache["r"] = real((seed, idx[:1], needs[:1], vol, mp))
    return {s: ([dict(rows[0], id=f"sim-{i:09d}") for i in idx], np.repeat(imgs, len(idx), 0))
            for s, (rows, imgs) in cache["r"].items()}
pl._render_batch = fake
def rss():
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))
out = {}
for n in json.loads(sys.argv[2]):
    pl.simulate(n, seed=0, out=sys.argv[1], workers=0, progress=False, report=False)
    out[n] = round(rss(), 1)
print(json.dumps(out))
"""


def streaming_check(sizes: list[int]) -> dict:
    """Parent RSS after writing sizes[k] galaxies to the two Stores (growing one run, resumed)."""
    tmp = Path(tempfile.mkdtemp(prefix="mt-simstream-"))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _STREAMING_CODE, str(tmp / "s"), json.dumps(sizes)],
            capture_output=True, text=True, check=True,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--check-growth", action="store_true")
    ap.add_argument("--streaming-check", type=str, default="",
                    help="comma-separated sizes, e.g. 5000,20000,50000: the parent's RSS after "
                    "writing that many galaxies (rendering replaced by a copy of one galaxy)")
    args = ap.parse_args()
    if args.streaming_check:
        sizes = [int(x) for x in args.streaming_check.split(",")]
        print(json.dumps({"benchmark": "simulate_streaming", "parent_rss_mib_after_n":
                          streaming_check(sizes)}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="mt-simbench-"))
    try:
        small = None
        if args.check_growth:
            small = _run_once(max(args.n // 4, 1), args.workers, tmp / "small")
        big = _run_once(args.n, args.workers, tmp / "big")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "simulate_speed",
        "n": args.n,
        "workers": args.workers,
        "surveys": ["sdss", "des"],
        "bands": 3,
        # rendering + votes + Store writes, after the pool has started
        "galaxies_per_s": round(args.n / big["render_s"], 1),
        # the whole command including interpreter start, imports and pool start
        "galaxies_per_s_end_to_end": round(args.n / big["process_s"], 1),
        "cpu_ms_per_galaxy": round(1e3 * big["cpu_s"] / args.n, 2),
        "peak_rss_mib": round(big["peak_rss_mib"], 1),
        "peak_pss_mib": round(big["peak_pss_mib"], 1),
    }
    if small is not None:
        result["n_small"] = max(args.n // 4, 1)
        result["peak_rss_mib_small"] = round(small["peak_rss_mib"], 1)
        result["peak_pss_mib_small"] = round(small["peak_pss_mib"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
