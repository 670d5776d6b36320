"""Ingest speed on real SDSS JPEG cutouts (../shared/data/sdss_gz1). Prints one JSON line.

    .venv/bin/python benchmarks/ingest_speed.py [--n 2000] [--workers 2]

The bar (issue 3): >= 200 JPEG cutouts per second on the 2-core machine. The figure includes
catalogue reading, decoding, preprocessing to 69 x 69 and the Store writes (not process start-up of
the interpreter). Other work on the machine depresses it; the load average is reported with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
GZ1 = (ROOT / ".." / "shared" / "data" / "sdss_gz1").resolve()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not (GZ1 / "labels.csv").exists():
        print(json.dumps({"benchmark": "ingest_speed", "skipped": f"{GZ1} absent"}))
        return
    from morphtransfer.data.ingest import ingest

    tmp = Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    try:
        cat = tmp / "labels.csv"
        pd.read_csv(GZ1 / "labels.csv").iloc[: args.n].to_csv(cat, index=False)
        res = ingest(GZ1, cat, "gz1", tmp / "store", survey="sdss", workers=args.workers,
                     progress=False).ingest_report
        print(json.dumps({
            "benchmark": "ingest_speed",
            "format": "gz1 SDSS SkyServer JPEG 423x423 -> 3x69x69",
            "n_ingested": res.n_ingested,
            "seconds": round(res.seconds, 3),
            "cutouts_per_s": round(res.rate_per_s, 1),
            "bar_cutouts_per_s": 200,
            "workers": args.workers,
            "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
