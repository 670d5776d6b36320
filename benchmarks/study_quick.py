"""Wall time of the quick study (what `make run` does after building the venv): one JSON line.

    .venv/bin/python benchmarks/study_quick.py [--out runs/bench_quick] [--preset quick]
                                               [--precision auto|32-true|bf16-mixed]

Runs (or resumes, if --out already holds a finished run) the study and prints the seconds spent
simulating, training the source models, running the experiments and writing the report, with
the machine's speed against the presets' [estimate] machine (``speed_factor``, the study's float32
conv probe, morphtransfer.speed) and the estimate the study printed from it
(``estimated_total_s``), so figures from different machines can be compared, and the precision
the models trained in (``training_precisions``, from their cards: the preset's "auto" is bf16
where native, ``precision_factor`` the speed-up the study measured for it). The machine has 2
cores shared with whatever else runs: note the load average printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    ap.add_argument("--precision", default=None, help="every training's precision, over the preset's")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="morphtransfer_bench_")

    from rich.console import Console

    from morphtransfer.report.tables import model_cards, training_precisions
    from morphtransfer.study import run_study

    res = run_study(preset=args.preset, out=out, console=Console(stderr=True), progress=False,
                    precision=args.precision)
    print(json.dumps({
        "benchmark": "study_quick",
        "preset": args.preset,
        "out": str(out),
        **res.timings,
        "training_precisions": training_precisions(model_cards(out)),
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
