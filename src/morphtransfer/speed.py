"""How fast this machine computes: the probe behind the study's time estimate.

Training DS18 on a CPU is bound by its float32 convolutions (oneDNN). So the rate of one large
float32 convolution on the threads training will use says how much faster or slower than the
machine the presets' ``[estimate]`` speeds were measured on a study will run here. Measured:
a 2-core AMD EPYC ran this conv at 425-431 GFLOP/s and trained DS18 at 151-158 images/s
(benchmarks/train_speed.py), a 2-core Intel Xeon at 143 GFLOP/s and 48.5 images/s: 3.0x and
3.2x. A large matmul says less (428 and ~190 GFLOP/s, 2.2x: the Xeon's convolutions reach a
smaller share of its matmul rate). The benchmarks use the same functions for their ceilings.
"""

from __future__ import annotations

import statistics
import time

import torch


def best_rate(fn, flops: float, reps: int) -> tuple[float, float]:
    """(best wall GFLOP/s, best CPU-time GFLOP/s x threads) of ``fn`` over ``reps`` calls after a
    warm-up: contention only slows a repetition down, so the best one is the closest to what the
    cores can do."""
    fn()
    best_wall = best_cpu = 0.0
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        best_wall = max(best_wall, flops / max(wall, 1e-9) / 1e9)
        best_cpu = max(best_cpu, flops / (max(cpu, 1e-9) / torch.get_num_threads()) / 1e9)
    return best_wall, best_cpu


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 8) -> tuple[float, float]:
    """An n x n matmul on torch's current threads: (best wall GFLOP/s, best CPU-time GFLOP/s x
    threads)."""
    a = torch.rand(n, n).to(dtype)
    b = torch.rand(n, n).to(dtype)
    return best_rate(lambda: a @ b, 2 * n**3, reps)


def conv_gflops(dtype: torch.dtype = torch.float32, reps: int = 5) -> tuple[float, float]:
    """A large 3x3 conv (32 x 128 x 64 x 64, channels-last, oneDNN), as matmul_gflops: 4.8 GFLOP
    a call, so ~0.2 s for 4 repetitions at 140 GFLOP/s."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
    x = torch.rand(32, 128, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            conv(x)

    return best_rate(run, 2 * 32 * 64 * 64 * 128 * 128 * 9, reps)


def _train_step(precision: str, batch: int = 30):
    """A callable that runs one DS18 training step in ``precision`` ("32-true" or "bf16-mixed"):
    the engine's augmentation, forward, loss, backward and an Adam step on a fixed random batch
    of 69 x 69 x 3 inputs, channels-last."""
    from contextlib import nullcontext

    from morphtransfer.models import build_model
    from morphtransfer.train import Recipe, build_augment

    gen = torch.Generator().manual_seed(0)
    model = build_model("ds18").to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    augment = build_augment(Recipe())
    x = torch.rand(batch, 3, 69, 69, generator=gen)
    y = (torch.rand(batch, generator=gen) < 0.5).float()
    bf16 = precision.startswith("bf16")

    def step():
        with torch.no_grad():
            xa = augment(x).contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with ctx:
            logits = model(xa).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _timed(step) -> float:
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def train_step_speedup(precision: str, pairs: int = 6, batch: int = 30, warmup: int = 2) -> float:
    """How many times faster DS18 trains in ``precision`` than in float32 on this machine's
    current threads: the median, over ``pairs`` back-to-back pairs of training steps (one in
    each precision), of float32's step time over ``precision``'s (~4 s in all on 2 cores). The
    steps alternate, so a load on the host slows both sides of a pair alike, and the median
    drops the pairs it hit unevenly; the best of separate runs in each precision read 1.5-2.5x
    from run to run on the AMD EPYC machine, where its whole trainings gained 1.6-2.1x. Still an
    upper bound on a whole training's gain, whose data loading and fixed costs do not speed up.
    The study's estimate divides its float32 training times by it (study.precision_speedups)."""
    fp32, other = _train_step("32-true", batch), _train_step(precision, batch)
    for _ in range(warmup):
        fp32()
        other()
    return statistics.median(_timed(fp32) / _timed(other) for _ in range(pairs))
