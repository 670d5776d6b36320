"""Training and inference throughput of DS18 on this machine; prints one JSON line.

    python benchmarks/train_speed.py [--store S --task Q1] [--n 600] [--epochs 3]
                                     [--precision 32-true bf16-mixed] [--compile] [--ddp-cpu 2]

Training is measured end to end through ``train_model`` (images read from a Store, Lightning,
augmentation on the batch, batch 30): img/s over the epochs after the first (oneDNN builds its
kernels in the first steps). Inference is ``predict_store`` end to end: Zarr reads of 512
galaxies overlapped with the network, which is the one inference loop (``inference.run_prepared``:
a copy of the model, bf16 as cast weights rather than autocast, channels_last, micro-batches of
32 on CPU); precision "bf16-mixed" there means bfloat16 weights and activations.
Without --store a synthetic Store of blob images is built in a temporary folder.

The ceiling is the faster of a large matmul and a large conv measured in the same run (fp32, bf16); the fraction of it each
throughput reaches uses the network's FLOPs per image (2 x multiply-adds; training = forward +
backward = 3x forward, less the input gradient of the first conv, which is not needed).
Other processes share the cores: the JSON carries the load average and a CPU-time figure
(images per CPU-second of this process x threads) that is less sensitive to contention.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from morphtransfer.speed import conv_gflops, matmul_gflops


def ds18_forward_flops(image_size: int = 69) -> tuple[float, float]:
    """(forward FLOPs per image, FLOPs of the first conv) of DS18: 2 x multiply-adds."""
    s1 = image_size * image_size  # 'same' padding keeps 69 x 69
    s2 = (image_size // 2) ** 2  # after the first 2x2 max-pool
    s3 = (image_size // 4) ** 2  # after the second
    conv1 = 2 * s1 * 32 * 3 * 6 * 6
    conv2 = 2 * s1 * 64 * 32 * 5 * 5
    conv3 = 2 * s2 * 128 * 64 * 2 * 2
    conv4 = 2 * s3 * 128 * 128 * 3 * 3
    dense = 2 * (128 * s3 * 64 + 64)
    return float(conv1 + conv2 + conv3 + conv4 + dense), float(conv1)


def raw_loop_img_per_s(images: torch.Tensor, precision: str, steps: int = 20) -> tuple[float, float]:
    """(img/s wall, img/s per CPU-second x threads) of a bare PyTorch loop, same recipe, batch 30.

    The difference to train_model's figure is Lightning's and the data loader's overhead.
    """
    from morphtransfer.models import DS18
    from morphtransfer.train import BatchAugment

    torch.manual_seed(0)
    model = DS18().train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    aug = BatchAugment()
    y = (torch.arange(30) % 2).float()
    bf16 = precision == "bf16-mixed"

    def step(i):
        idx = torch.randint(0, len(images), (30,))
        x = aug(images[idx]).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(3):
        step(i)
    t, c = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(i)
    n = 30 * steps
    return n / (time.perf_counter() - t), n / (time.process_time() - c) * torch.get_num_threads()


DDP_SCRIPT = """
import json, sys
from morphtransfer.train import Recipe, train_model
a = json.loads(sys.argv[1])
train_model(a["store"], a["task"], recipe=Recipe(**a["recipe"]), out=a["out"], n_train=a["n_train"],
            progress=False, accelerator="cpu", devices=a["devices"], strategy="ddp")
"""


def ddp_cpu_img_per_s(store, task, n_train, epochs, precision, devices, out) -> float:
    """All-rank img/s of train_model under DDP on CPU processes, over the epochs after the first.

    Lightning's "ddp" re-runs the calling script, so the training runs in a small script of its
    own; Lightning gives each process cpu_count / devices threads. The figure is the module's
    logged train_img_per_s (images of every rank over rank 0's epoch time, validation included).
    """
    import subprocess

    script = Path(out).parent / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    arg = {"store": str(store), "task": task, "n_train": n_train, "out": str(out),
           "devices": devices,
           "recipe": {"max_epochs": epochs, "precision": precision, "early_stopping_patience": None}}
    subprocess.run([sys.executable, str(script), json.dumps(arg)], check=True,
                   capture_output=True, text=True)
    log = pd.read_csv(Path(out) / "training_log.csv", index_col=0)
    rates = log["train_img_per_s"].to_numpy()
    steady = rates[1:] if len(rates) > 1 else rates
    # the mean over epochs of equal size is the harmonic mean of the rates
    return round(float(len(steady) / np.sum(1.0 / steady)), 1)


def synthetic_store(path: Path, n: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_train import _votes, blob_images  # the test suite's round vs elongated blobs

    from morphtransfer.data.store import StoreWriter

    imgs, y = blob_images(n, np.random.default_rng(0))
    rows = pd.concat([pd.DataFrame({"id": [f"g{i}" for i in range(n)], "true_disk": y}), _votes(y)],
                     axis=1)
    StoreWriter(path, survey="sdss", bands=["g", "r", "i"]).append(rows, imgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="a Store with robust labels (default: synthetic blobs)")
    ap.add_argument("--task", default="Q1")
    ap.add_argument("--n", type=int, default=600, help="training galaxies (synthetic or subsample)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--ddp-cpu", type=int, default=0, metavar="N",
                    help="also train with DDP over N CPU processes (1 thread each, gloo): "
                         "train_model(devices=N, accelerator='cpu', strategy='ddp')")
    ap.add_argument("--infer-n", type=int, default=4096, help="galaxies predicted (store repeated)")
    ap.add_argument("--compile-infer", action="store_true",
                    help="also time the network torch.compile'd (adds 20-70 s of compilation)")
    args = ap.parse_args()

    import lightning as L

    from morphtransfer.data.store import Store
    from morphtransfer.train import Recipe, predict_store, train_model

    tmp = Path(tempfile.mkdtemp(prefix="mt_bench_"))
    try:
        if args.store:
            store = Store(args.store)
        else:
            synthetic_store(tmp / "store", args.n)
            store = Store(tmp / "store")

        class Clock(L.Callback):
            def __init__(self):
                self.epochs = []

            def on_train_epoch_start(self, trainer, pl_module):
                self.t, self.c, self.n = time.perf_counter(), time.process_time(), 0

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.n += len(batch[1])

            def on_train_epoch_end(self, trainer, pl_module):
                self.epochs.append((self.n, time.perf_counter() - self.t, time.process_time() - self.c))

        threads = torch.get_num_threads()
        flops_fwd, flops_conv1 = ds18_forward_flops()
        flops_train = 3 * flops_fwd - flops_conv1
        # the ceiling: the faster of a large matmul and a large conv, measured now (fp32 matmul
        # on this AMD CPU reaches only ~70% of what oneDNN's conv kernels do)
        mm32, mm16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
        cv32, cv16 = conv_gflops(torch.float32), conv_gflops(torch.bfloat16)
        gf32, gf32_cpu = max(mm32[0], cv32[0]), max(mm32[1], cv32[1])
        gfbf16, gfbf16_cpu = max(mm16[0], cv16[0]), max(mm16[1], cv16[1])
        result: dict = {
            "benchmark": "train_speed",
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "load_avg_start": os.getloadavg()[0],
            "gflop_per_image_forward": round(flops_fwd / 1e9, 4),
            "gflop_per_image_train": round(flops_train / 1e9, 4),
            "ceiling_gflops": round(gf32, 1),
            "ceiling_gflops_bf16": round(gfbf16, 1),
            "ceiling_gflops_cpu": round(gf32_cpu, 1),
            "matmul_gflops": round(mm32[0], 1),
            "matmul_gflops_bf16": round(mm16[0], 1),
            "conv_gflops": round(cv32[0], 1),
            "conv_gflops_bf16": round(cv16[0], 1),
            "ceiling_gflops_bf16_cpu": round(gfbf16_cpu, 1),
            "compile": bool(args.compile),
            "channels_last": not args.no_channels_last,
            "n_train": args.n,
            "epochs": args.epochs,
        }
        for prec in args.precision:
            tag = "" if prec == "32-true" else "_bf16"
            ceiling = gf32 if prec == "32-true" else gfbf16
            ceiling_cpu = gf32_cpu if prec == "32-true" else gfbf16_cpu
            clock = Clock()
            recipe = Recipe(max_epochs=args.epochs, precision=prec, compile=args.compile,
                            channels_last=not args.no_channels_last, early_stopping_patience=None)
            t0 = time.perf_counter()
            out = train_model(store, args.task, recipe=recipe, out=tmp / f"model{tag}",
                              n_train=args.n if args.store else None, progress=False,
                              callbacks=[clock])
            total = time.perf_counter() - t0
            steady = clock.epochs[1:] or clock.epochs
            n_img = sum(e[0] for e in steady)
            wall = sum(e[1] for e in steady)
            cpu = sum(e[2] for e in steady)
            train_ips = n_img / wall
            result[f"train_img_per_s_best_epoch{tag}"] = round(max(e[0] / e[1] for e in steady), 1)
            result[f"train_img_per_s{tag}"] = round(train_ips, 1)
            result[f"train_img_per_cpu_s_x_threads{tag}"] = round(n_img / cpu * threads, 1)
            raw_wall, raw_cpu = raw_loop_img_per_s(
                torch.from_numpy(store.read_images(store.catalog["image_index"][:600])), prec)
            result[f"raw_loop_train_img_per_s{tag}"] = round(raw_wall, 1)
            result[f"raw_loop_train_img_per_cpu_s_x_threads{tag}"] = round(raw_cpu, 1)
            if args.ddp_cpu > 1:
                result[f"train_img_per_s_ddp_cpu{args.ddp_cpu}{tag}"] = ddp_cpu_img_per_s(
                    store.path, args.task, args.n if args.store else None, args.epochs, prec,
                    args.ddp_cpu, tmp / f"model_ddp{tag}")
            result[f"train_first_epoch_s{tag}"] = round(clock.epochs[0][1], 2)
            result[f"train_total_s{tag}"] = round(total, 2)
            result[f"train_fraction_of_ceiling{tag}"] = round(train_ips * flops_train / 1e9 / ceiling, 3)
            result[f"train_fraction_of_ceiling_cpu{tag}"] = round(
                n_img / cpu * threads * flops_train / 1e9 / ceiling_cpu, 3)

            # inference from the Store: repeat the catalogue up to infer_n rows
            cat = store.catalog
            rows = cat.iloc[np.arange(args.infer_n) % len(cat)]
            predict_store(out, store, rows.iloc[:512], precision=prec)  # warm-up
            t, c = time.perf_counter(), time.process_time()
            predict_store(out, store, rows, precision=prec)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            infer_ips = len(rows) / dt
            result[f"infer_img_per_s{tag}"] = round(infer_ips, 1)
            result[f"infer_img_per_cpu_s_x_threads{tag}"] = round(len(rows) / dc * threads, 1)
            result[f"infer_fraction_of_ceiling{tag}"] = round(infer_ips * flops_fwd / 1e9 / ceiling, 3)
            result[f"infer_fraction_of_ceiling_cpu{tag}"] = round(
                len(rows) / dc * threads * flops_fwd / 1e9 / ceiling_cpu, 3)
            if args.compile_infer:
                # predict_store runs a copy of the model it is given, so a compiled network is
                # timed through the loop itself (images in memory: the network alone), next to
                # the same loop uncompiled
                from morphtransfer.inference import prepare_model, run_prepared
                from morphtransfer.models import load_model

                imgs = store.read_images(rows["image_index"].to_numpy())
                net = prepare_model(load_model(out)[0], prec)
                cnet = torch.compile(net, options={"freezing": True})
                t = time.perf_counter()
                run_prepared([cnet], imgs[:512])
                result[f"infer_compile_s{tag}"] = round(time.perf_counter() - t, 1)
                for key, model in (("infer_network", net), ("infer_compiled_network", cnet)):
                    t, c = time.perf_counter(), time.process_time()
                    run_prepared([model], imgs)
                    dt, dc = time.perf_counter() - t, time.process_time() - c
                    result[f"{key}_img_per_s{tag}"] = round(len(rows) / dt, 1)
                    result[f"{key}_img_per_cpu_s_x_threads{tag}"] = round(len(rows) / dc * threads, 1)
        result["load_avg_end"] = os.getloadavg()[0]
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
