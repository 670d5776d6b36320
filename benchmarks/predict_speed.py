"""Catalogue inference throughput end to end (Store -> models -> Parquet); prints one JSON line.

    python benchmarks/predict_speed.py [--n 4096] [--models 1 3] [--precision 32-true bf16]
                                       [--train-steps 80] [--device cpu|cuda]

Each figure is one whole ``predict_catalog`` run on a fresh output: reading the Zarr Store,
every model, writing shards and merging the Parquet file (model loading and the plan included).
A warm-up run on 512 galaxies first lets oneDNN build its kernels. ``network_alone_*`` is the
network on images already in memory, measured just before; ``end_to_end_over_network_*`` (their
ratio) is the pipeline's efficiency and barely moves when other processes share the cores.

The ceiling is a large matmul measured in the same run (float32 and bfloat16); the fraction of it
each throughput reaches uses the network's FLOPs per image (2 x multiply-adds, counted on the
module shapes) times the number of models. Other processes may share the cores: the JSON carries
the load average and ``*_img_per_cpu_s_x_threads`` (galaxies per CPU-second of this process times
the threads), which is less sensitive to contention than wall time.

bfloat16 accuracy: a DS18 is trained briefly here (round vs elongated blobs, ``--train-steps``
Adam steps) so that its probabilities mean something; the JSON gives max and mean |p_bf16 - p_fp32|
over the benchmark galaxies and the ROC AUC of each precision against the blob truth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def forward_flops(model: torch.nn.Module, shape=(1, 3, 69, 69)) -> float:
    """FLOPs (2 x multiply-adds) of one image through the model's convolutions and dense layers."""
    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2.0 * out.numel() * k
        elif isinstance(mod, torch.nn.Linear):
            total += 2.0 * mod.in_features * mod.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.inference_mode():
        model.eval()(torch.zeros(shape))
    for h in hs:
        h.remove()
    return total


def matmul_gflops(dtype: torch.dtype, device: str = "cpu", n: int = 2048, reps: int = 8) -> float:
    if device == "cuda":
        n, reps = 8192, 20
    a = torch.rand(n, n, device=device).to(dtype)
    b = torch.rand(n, n, device=device).to(dtype)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return reps * 2 * n**3 / (time.perf_counter() - t) / 1e9


def blobs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy elliptical blobs; label 1 = elongated (axis ratio < 0.55), 0 = round."""
    yy, xx = np.mgrid[:69, :69] - 34.0
    y = rng.random(n) < 0.5
    q = np.where(y, rng.uniform(0.2, 0.45, n), rng.uniform(0.65, 1.0, n))[:, None, None]
    sig = rng.uniform(3, 10, n)[:, None, None]
    theta = rng.uniform(0, np.pi, n)[:, None, None]
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    img = np.exp(-0.5 * (u**2 + (v / q) ** 2) / sig**2)[:, None]
    img = img + 0.1 * rng.random((n, 3, 69, 69))
    img = img / img.max(axis=(2, 3), keepdims=True)
    return img.astype(np.float32), y.astype(np.int64)


def train_briefly(steps: int, seed: int = 0):
    from morphtransfer.models import DS18

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    model = DS18().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(steps):
        x, y = blobs(32, rng)
        x = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x), torch.from_numpy(y).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def network_alone(model, images: torch.Tensor, dtype: torch.dtype, device: str,
                  micro_batch: int) -> float:
    """Galaxies/s of the network alone on images already in memory (the engine's micro-batches)."""
    import copy

    net = copy.deepcopy(model).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        def one_pass():
            for s in range(0, len(images), micro_batch):
                x = images[s : s + micro_batch].to(device).to(dtype)
                torch.sigmoid(net(x.contiguous(memory_format=torch.channels_last)).float()).cpu()

        one_pass()  # oneDNN / cuDNN build their kernels on the first pass
        t = time.perf_counter()
        one_pass()
        return len(images) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="galaxies in the benchmark Store")
    ap.add_argument("--models", type=int, nargs="+", default=[1, 3], help="models per pass")
    ap.add_argument("--precision", nargs="+", default=["32-true", "bf16"])
    ap.add_argument("--train-steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--device", default=None)
    ap.add_argument("--tmp", default=None, help="folder for the Store (default: a temp folder)")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from morphtransfer.data.store import StoreWriter
    from morphtransfer.models import save_model
    from morphtransfer.predict import CPU_COMPUTE_BATCH, bf16_supported, predict_catalog

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="mt_predict_bench_", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        model = train_briefly(args.train_steps)
        train_s = time.perf_counter() - t0
        paths = [save_model(model, tmp / f"m{t}", {"task": t, "survey": "sdss"})
                 for t in ("Q1", "Q2", "Q3")]
        rows = pd.DataFrame({"id": [f"g{i:07d}" for i in range(args.n)],
                             "ra": np.linspace(0, 360, args.n, endpoint=False),
                             "dec": np.zeros(args.n)})
        store = tmp / "store"
        w = StoreWriter(store, survey="des", bands=["g", "r", "i"])
        rng, truth, sample = np.random.default_rng(7), [], None
        for s in range(0, args.n, 2048):  # in chunks: a GPU-sized --n does not fit in memory
            imgs, y = blobs(min(2048, args.n - s), rng)
            w.append(rows.iloc[s : s + len(y)], imgs)
            truth.append(y)
            sample = torch.from_numpy(imgs) if sample is None else sample
        truth = np.concatenate(truth)

        threads = torch.get_num_threads()
        flops = forward_flops(model)
        ceiling = {"32-true": matmul_gflops(torch.float32, device),
                   "bf16": matmul_gflops(torch.bfloat16, device)}
        result: dict = {
            "benchmark": "predict_speed",
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "load_avg_start": round(os.getloadavg()[0], 2),
            "n_galaxies": args.n,
            "batch_size": args.batch_size,
            "gflop_per_image_per_model": round(flops / 1e9, 4),
            "ceiling_gflops_fp32": round(ceiling["32-true"], 1),
            "ceiling_gflops_bf16": round(ceiling["bf16"], 1),
            "bf16_native": bf16_supported(device),
            "train_steps": args.train_steps,
            "train_s": round(train_s, 1),
        }
        probs = {}
        for prec in args.precision:
            tag = "fp32" if prec == "32-true" else "bf16"
            pd.DataFrame({"id": rows["id"].iloc[:512]}).to_csv(tmp / "warm.csv", index=False)
            predict_catalog(paths[:1], tmp / f"warm_{tag}.parquet", store=store, device=device,
                            catalog=tmp / "warm.csv", precision=prec, progress=False)
            micro = args.batch_size if device == "cuda" else CPU_COMPUTE_BATCH
            alone = network_alone(model, sample, torch.bfloat16 if tag == "bf16" else torch.float32,
                                  device, micro)
            result[f"network_alone_images_per_s_{tag}_1model"] = round(alone, 1)
            for k in args.models:
                out = tmp / f"cat_{tag}_{k}.parquet"
                t, c = time.perf_counter(), time.process_time()
                predict_catalog(paths[:k], out, store=store, precision=prec, device=device,
                                batch_size=args.batch_size, progress=False)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                ips = args.n / wall
                key = f"{tag}_{k}model{'s' if k > 1 else ''}"
                result[f"images_per_s_{key}"] = round(ips, 1)
                result[f"img_per_cpu_s_x_threads_{key}"] = round(args.n / cpu * threads, 1)
                result[f"fraction_of_ceiling_{key}"] = round(
                    ips * k * flops / 1e9 / ceiling[prec], 3)
                if k == 1:  # pipeline efficiency: end to end vs the network alone, same moment
                    result[f"end_to_end_over_network_{tag}"] = round(ips / alone, 3)
                if k == args.models[0]:
                    probs[tag] = pd.read_parquet(out)["p_Q1"].to_numpy()
        if "fp32" in probs and "bf16" in probs:
            d = np.abs(probs["bf16"].astype(np.float64) - probs["fp32"])
            auc32 = roc_auc_score(truth, probs["fp32"])
            auc16 = roc_auc_score(truth, probs["bf16"])
            result.update({
                "bf16_max_abs_dp": float(f"{d.max():.3g}"),
                "bf16_mean_abs_dp": float(f"{d.mean():.3g}"),
                "auc_fp32": round(auc32, 5),
                "auc_bf16": round(auc16, 5),
                "auc_change_bf16": float(f"{auc16 - auc32:.3g}"),
                "label_flips_at_0p5": int(((probs["bf16"] > 0.5) != (probs["fp32"] > 0.5)).sum()),
            })
        headline = [k for k in result if k.startswith("images_per_s_")]
        best = max(headline, key=lambda k: result[k]) if headline else None
        if best:
            result["images_per_s"] = result[best]
            result["images_per_s_config"] = best.removeprefix("images_per_s_")
            result["fraction_of_ceiling"] = result[f"fraction_of_ceiling_{result['images_per_s_config']}"]
        result["load_avg_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
