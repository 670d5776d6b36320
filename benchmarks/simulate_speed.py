"""Throughput and memory of the simulator: galaxies per second, each rendered in both surveys and
three bands, voted on and written to the two Stores, with the worker pool.

    python benchmarks/simulate_speed.py --n 2000 --workers 2

Prints one JSON line. Peak memory is measured for the parent and (separately) the largest worker;
streaming keeps both flat in n (``--check-growth`` runs n/4 first and reports both peaks, so the
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


def _run_once(n: int, workers: int, out: Path) -> dict:
    """Run in a fresh interpreter so that peak RSS belongs to this n only."""
    code = f"""
import json, resource, time
from morphtransfer.simulate import simulate
t = time.perf_counter()
res = simulate({n}, seed=0, out={str(out)!r}, workers={workers}, progress=False, report=False)
wall = time.perf_counter() - t
self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"wall_s": wall, "render_s": res.seconds, "parent_rss_mib": self_kib / 1024,
                  "worker_rss_mib": child_kib / 1024}}))
"""
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["process_s"] = time.perf_counter() - t0
    info["cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--check-growth", action="store_true")
    args = ap.parse_args()
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
        "peak_rss_mib": round(big["parent_rss_mib"] + args.workers * big["worker_rss_mib"], 1),
        "parent_rss_mib": round(big["parent_rss_mib"], 1),
        "worker_rss_mib": round(big["worker_rss_mib"], 1),
    }
    if small is not None:
        result["peak_rss_mib_at_n_over_4"] = round(
            small["parent_rss_mib"] + args.workers * small["worker_rss_mib"], 1
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
