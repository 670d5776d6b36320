"""Real-data check (issue 3, item 7): ingest all 5,000 real SDSS GZ1 cutouts into a Store with
Q1/Q2 labels from the GZ1 classes, time it, and draw a few next to their 69 x 69 model inputs.

    .venv/bin/python benchmarks/real_data_check.py [--out data/sdss_gz1] [--png benchmarks/out/sdss_gz1_check.png]

Prints one JSON line (time, counts, robust labels per class). Resumes an existing Store; pass
--fresh to rebuild it and time the whole ingest.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GZ1 = (ROOT / ".." / "shared" / "data" / "sdss_gz1").resolve()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "data" / "sdss_gz1"))
    ap.add_argument("--png", default=str(ROOT / "benchmarks" / "out" / "sdss_gz1_check.png"))
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    if not (GZ1 / "labels.csv").exists():
        print(json.dumps({"benchmark": "real_data_check", "skipped": f"{GZ1} absent"}))
        return
    from morphtransfer.data.ingest import check_figure, ingest
    from morphtransfer.tasks import robust_summary

    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    # SkyServer composites: R,G,B = i,r,g; the Store keeps g,r,i. No R90 column in labels.csv:
    # GZ1 cutouts are already scaled to the galaxy's Petrosian size, so the whole image is used.
    store = ingest(GZ1, GZ1 / "labels.csv", "gz1", args.out, survey="sdss",
                   bands=("g", "r", "i"), channel_bands=("i", "r", "g"), workers=2,
                   progress=False)
    res = store.ingest_report
    table = check_figure(store, args.png, n=8)
    summary = robust_summary(store.catalog).set_index("task")
    print(json.dumps({
        "benchmark": "real_data_check",
        "store": str(args.out),
        "n_in_store": len(store),
        "n_ingested_now": res.n_ingested,
        "n_rejected": res.n_rejected,
        "n_dropped_gz1_classes_4_5": res.n_dropped_by_catalog,
        "seconds": round(res.seconds, 2),
        "png": str(args.png),
        "png_rows": len(table),
        "robust": {t: {"n_pos": int(r.n_pos), "n_neg": int(r.n_neg)} for t, r in summary.iterrows()},
    }))


if __name__ == "__main__":
    main()
