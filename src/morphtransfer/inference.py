"""The one inference loop: P(positive) of DS18 models for images in memory.

Every caller runs the network through here: ``train.predict_tensor`` (validation probabilities
written to the model card), ``train.predict_store`` / ``evaluate_model`` / the study, and the
catalogue engine ``predict.ShardPredictor``. The loop is the fast one measured on 2 Zen-5 cores:

- an eval-mode *copy* of the model (``prepare_model``): the caller's model (the training code
  passes its live one) keeps its dtype, memory layout and train/eval flag;
- bfloat16 as a cast copy of the weights, not autocast: no per-layer casts, measured ~1.9x
  float32 on AVX512-BF16 CPUs, AUC change +2.6e-5 against float32 (issue 5's bar: 0.005);
- channels_last (oneDNN's and cuDNN's fast layout for convolutions);
- micro-batches of ``CPU_COMPUTE_BATCH`` on CPU (one layer's activations stay in cache), the
  whole batch at once on a GPU;
- ``torch.inference_mode``.

``precision="auto"`` (``resolve_precision``) means bfloat16 where it is native (CPUs with
AVX512-BF16 or AMX, bf16-capable CUDA GPUs) and float32 elsewhere; "32-true" is always float32.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from morphtransfer.errors import InputError
from morphtransfer.models import predict_proba

# Micro-batch of the network on CPU. Measured on 2 Zen-5 cores (DS18, channels_last): 32-64
# galaxies run ~1.5x faster than 1024 because one layer's activations (32 x 32 ch x 69 x 69 x 4 B
# = 19 MB) stay in L2+L3 cache. With this loop (median of 8, shared machine): fp32 709 img/s at
# 32, 577 at 64, 402 at 512; bf16 1315 at 32, 1291 at 64, 746 at 512. On a GPU the whole batch
# goes through at once.
CPU_COMPUTE_BATCH = 32

# Every precision name accepted anywhere -> the Lightning name it stands for. Inference runs
# "bf16-mixed" and "bf16-true" the same way (bfloat16 weights and activations, float32 sigmoid).
PRECISION_NAMES = {
    "auto": "auto",
    "32-true": "32-true",
    "32": "32-true",
    "fp32": "32-true",
    "float32": "32-true",
    "bf16-mixed": "bf16-mixed",
    "bf16-true": "bf16-mixed",
    "bf16": "bf16-mixed",
    "bfloat16": "bf16-mixed",
    "16-mixed": "16-mixed",
    "16": "16-mixed",
    "fp16": "16-mixed",
    "float16": "16-mixed",
}
DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def default_device() -> torch.device:
    """Where Lightning's accelerator="auto" and the catalogue engine run: CUDA when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 runs natively (AVX512-BF16/AMX on CPU, Ampere or later on CUDA)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: assume not
        return False


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """The Lightning precision a name stands for on ``device``: "32-true", "bf16-mixed" or "16-mixed".

    "auto" is "bf16-mixed" where bfloat16 is native (``bf16_supported``), else "32-true".
    device None: ``default_device()``. Unknown names raise InputError.
    """
    key = str(precision).strip().lower()
    if key not in PRECISION_NAMES:
        raise InputError(
            f"unknown precision {precision!r}; use 'auto' (bfloat16 where the hardware runs it "
            "natively, else float32), '32-true' (float32) or 'bf16-mixed' / 'bf16' (bfloat16)"
        )
    name = PRECISION_NAMES[key]
    if name == "auto":
        dev = default_device() if device is None else torch.device(device)
        return "bf16-mixed" if bf16_supported(dev) else "32-true"
    return name


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def compute_batch(device: str | torch.device, batch: int | None = None) -> int:
    """Micro-batch of the network: ``CPU_COMPUTE_BATCH`` (at most ``batch``) on CPU, ``batch`` on
    a GPU (None: 512)."""
    if torch.device(device).type == "cpu":
        return max(1, min(int(batch or CPU_COMPUTE_BATCH), CPU_COMPUTE_BATCH))
    return max(1, int(batch or 512))


def prepare_model(model: nn.Module, precision: str = "auto", device=None, *,
                  channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` in the precision's dtype, on ``device`` (None: the model's).

    The copy is what makes bfloat16 safe to ask for anywhere: the caller's model (e.g. the live
    one of a training) keeps its float32 weights, memory layout and train/eval flag. DS18 is
    10 MB of weights, so the copy costs milliseconds. A ``torch.compile``d model is copied from
    the module it wraps.
    """
    base = getattr(model, "_orig_mod", model)
    dev = _device_of(base) if device is None else torch.device(device)
    dtype = DTYPES[resolve_precision(precision, dev)]
    with torch.no_grad():
        net = copy.deepcopy(base).to(device=dev, dtype=dtype)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
    return net.eval().requires_grad_(False)


def _mc_draws(net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """(n, batch) probabilities with the dropout layers on (Monte Carlo dropout)."""
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    for m in drops:
        m.train()
    try:
        return torch.stack([predict_proba(net, x) for _ in range(n)])
    finally:
        for m in drops:
            m.eval()


def run_prepared(nets: Sequence[nn.Module], images, *, batch: int | None = None,
                 mc_dropout: int = 0, channels_last: bool = True) -> list[dict[str, np.ndarray]]:
    """The loop. ``nets``: models from ``prepare_model`` (one device and dtype); every net sees
    each micro-batch in turn, so the images are moved and cast once for all of them.

    Returns per net {"p": P(positive)} and with mc_dropout = N >= 2 also "std" and "mc_mean" over
    N passes with dropout on (the global torch generator draws the masks: seed it before).
    batch: the network's micro-batch (None: ``compute_batch`` of the device).
    """
    nets = list(nets)
    if not nets:
        return []
    x_all = torch.as_tensor(images)
    n = len(x_all)
    first = nets[0]
    device = _device_of(first)
    try:
        dtype = next(first.parameters()).dtype
    except StopIteration:
        dtype = torch.float32
    step = compute_batch(device, batch)
    outs = []
    for _ in nets:
        o = {"p": np.empty(n, np.float32)}
        if mc_dropout:
            o["std"] = np.empty(n, np.float32)
            o["mc_mean"] = np.empty(n, np.float32)
        outs.append(o)
    with torch.inference_mode():
        for s in range(0, n, step):
            x = x_all[s : s + step].to(device, non_blocking=True).to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            e = s + len(x)
            for net, o in zip(nets, outs):
                o["p"][s:e] = predict_proba(net, x).reshape(-1).cpu().numpy()
                if mc_dropout:
                    draws = _mc_draws(net, x, int(mc_dropout))
                    o["std"][s:e] = draws.std(dim=0).reshape(-1).cpu().numpy()
                    o["mc_mean"][s:e] = draws.mean(dim=0).reshape(-1).cpu().numpy()
    return outs


def probabilities(model: nn.Module, images, *, precision: str = "auto", batch: int | None = None,
                  device=None, channels_last: bool = True) -> np.ndarray:
    """P(positive) of one model for images (n, bands, size, size), an (n,) float32 array:
    ``prepare_model`` then ``run_prepared``. The caller's model is not changed."""
    net = prepare_model(model, precision, device, channels_last=channels_last)
    return run_prepared([net], images, batch=batch, channels_last=channels_last)[0]["p"]
