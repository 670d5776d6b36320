"""The DS18 network (Dominguez Sanchez et al. 2018, Table 1; reused in 2019) and models on disk.

A model on disk is a folder with ``weights.safetensors`` (never pickle) and ``card.json``
(architecture, task, survey, training-set hash and size, recipe, metrics, package version).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from morphtransfer import __version__
from morphtransfer.errors import InputError

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"


class Dropout(nn.Dropout):
    """nn.Dropout with a CPU mask about 10x cheaper to draw; the same on GPU.

    PyTorch's CPU dropout draws one Bernoulli number per activation (~10 ns each): with the
    4.6 million activations after DS18's first conv in a batch of 30, dropout took a fifth of a
    CPU training step. Here the mask comes from 8 random bits per activation when 1 - p is a
    multiple of 1/256 (exact: DS18's 0.5 and 0.25), else 16 bits (p exact to 1.5e-5), cut from
    64-bit draws of the same seeded torch generator (keep when the bits fall below (1 - p) x 2^bits). No parameters: state_dict
    keys are those of nn.Dropout (none).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p >= 1.0:
            return x * 0.0
        n = x.numel()
        keep = torch.empty_like(x, dtype=torch.bool)  # same memory layout as x (channels-last)
        # x is dense (conv/pool output), so its storage is n elements in some order: fill it
        # flat, the mask being i.i.d. the order does not matter
        flat = keep.as_strided((n,), (1,))
        q256 = (1.0 - self.p) * 256
        if q256 == round(q256):
            # 8 random bits per activation are exact when 1 - p is a multiple of 1/256 (DS18's
            # 0.5 and 0.25): half the random numbers of 16 bits, ~1/3 less time per call
            bits = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device)
            bits = bits.random_(-(2**63), None).view(torch.uint8)[:n]  # full 64 random bits each
            torch.lt(bits, int(q256), out=flat)
        else:
            bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
            bits = bits.random_(-(2**63), None).view(torch.int16)[:n]
            torch.lt(bits, -32768 + round((1.0 - self.p) * 65536), out=flat)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d; for 2x2 pooling without gradients on CPU, the max of four strided views.

    PyTorch's CPU max-pool also computes argmax indices and is not vectorised for bfloat16 in
    channels-last layout: it took a fifth of DS18's CPU inference time. The max of the four
    2x2 corners is the same number (floor mode: the last odd row/column is dropped).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, st = self.kernel_size, self.stride
        plain = (k in (2, (2, 2)) and st in (2, (2, 2)) and self.padding in (0, (0, 0))
                 and self.dilation in (1, (1, 1)) and not self.ceil_mode
                 and not self.return_indices)
        if not plain or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
        return torch.maximum(
            torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]),
            torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]),
        )


class DS18(nn.Module):
    """Table 1 of the study, 'same' padding, input 3 x 69 x 69, 2,602,849 parameters.

    ``forward`` returns the logit of the final Dense(1); the study's sigmoid is applied by
    ``predict_proba`` (and folded into BCEWithLogits in training, which is numerically safer).
    The conv stack is ``features`` and the dense part is ``head``: experiment (c) trains ``head`` only.
    """

    architecture = "ds18"

    def __init__(self, in_channels: int = 3, image_size: int = 69):
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        # 'same' padding as Keras/TensorFlow: for even kernels the extra row/column goes
        # bottom/right, written as explicit ZeroPad2d (left, right, top, bottom) so it is exact
        # and avoids PyTorch's padded copy for even kernels with padding="same".
        self.features = nn.Sequential(
            nn.ZeroPad2d((2, 3, 2, 3)),
            nn.Conv2d(in_channels, 32, 6),
            nn.ReLU(inplace=True),
            Dropout(0.5),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(inplace=True),
            MaxPool2d(2),
            Dropout(0.25),
            nn.ZeroPad2d((0, 1, 0, 1)),
            nn.Conv2d(64, 128, 2),
            nn.ReLU(inplace=True),
            MaxPool2d(2),
            Dropout(0.25),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.ReLU(inplace=True),
            Dropout(0.25),
        )
        side = image_size // 2 // 2  # two 2x2 max-pools with floor: 69 -> 34 -> 17
        self.flat_features = 128 * side * side  # 36,992 for 69 x 69
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flat_features, 64),
            nn.ReLU(inplace=True),
            Dropout(0.5),
            nn.Linear(64, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras' defaults, as in the study's code: Glorot-uniform kernels, zero biases.

        PyTorch's own defaults (Kaiming-uniform with a=sqrt(5), uniform biases) start the dense
        layer about 2.4x smaller; the study's network started from Keras' initialisation.
        """
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)

    def freeze_features(self) -> None:
        """Experiment (c): every convolutional layer frozen, only the dense part trains."""
        for p in self.features.parameters():
            p.requires_grad_(False)


@torch.no_grad()
def active_feature_channels(model: nn.Module, images, max_images: int = 256) -> int | None:
    """How many channels of the last convolutional layer fire (> 0 after its ReLU) on at least
    one of ``images`` (the first ``max_images``), in eval mode; None for a network without a
    ``features`` stack.

    0 is a dead network: the dense part sees zeros whatever the galaxy, so every galaxy gets the
    same P, and no gradient reaches the convolutional layers, so more training cannot revive it.
    DS18 trained from scratch on a signal it does not find (its dropout penalises any output
    that varies) can shut its features down one by one: the quick run's SDSS models keep 49-95
    of 128 firing, its flat from-scratch ones 11-123 (README, "Train and evaluate one model").
    """
    base = getattr(model, "_orig_mod", model)
    feats = getattr(base, "features", None)
    if feats is None:
        return None
    x = torch.as_tensor(images[:max_images])
    if x.shape[0] == 0:
        return None
    was_training = base.training
    base.eval()
    try:
        p = next(base.parameters())
        fired = None
        for i in range(0, x.shape[0], 64):
            h = feats(x[i:i + 64].to(device=p.device, dtype=p.dtype))
            f = (h > 0).flatten(2).any(2).any(0)
            fired = f if fired is None else fired | f
        return int(fired.sum())
    finally:
        base.train(was_training)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


ARCHITECTURES = {"ds18": DS18}


def build_model(architecture: str = "ds18", **kwargs) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[architecture](**kwargs)


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """P(positive answer) for a batch of model inputs (n, 3, 69, 69)."""
    return torch.sigmoid(model(images).float())


def _weights_id(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def save_model(model: nn.Module, directory: str | os.PathLike, card: dict) -> Path:
    """Write weights (safetensors) and the card; returns the folder. Atomic per file."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, directory / WEIGHTS_FILE)
    full = {
        "architecture": getattr(model, "architecture", type(model).__name__.lower()),
        "in_channels": getattr(model, "in_channels", 3),
        "image_size": getattr(model, "image_size", 69),
        "n_parameters": count_parameters(model),
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **card,
    }
    full["model_id"] = _weights_id(directory / WEIGHTS_FILE)
    tmp_card = directory / (CARD_FILE + ".tmp")
    tmp_card.write_text(json.dumps(full, indent=2, default=str))
    os.replace(tmp_card, directory / CARD_FILE)
    return directory


def read_card(path: str | os.PathLike) -> dict:
    directory = _model_dir(path)
    card_path = directory / CARD_FILE
    if not card_path.exists():
        raise InputError(
            f"{directory} has no {CARD_FILE}: a morphtransfer model is a folder with "
            f"{WEIGHTS_FILE} and {CARD_FILE} (written by `morphtransfer train`)"
        )
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{card_path} is not valid JSON ({exc}); re-train or restore it") from exc


def _model_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, CARD_FILE):
        p = p.parent
    if not p.is_dir():
        raise InputError(f"model {p} does not exist; pass the folder written by `morphtransfer train`")
    return p


def load_model(
    path: str | os.PathLike,
    expect_task: str | None = None,
    expect_architecture: str | None = "ds18",
) -> tuple[nn.Module, dict]:
    """Load (model in eval mode, card). Refuses a card whose task or architecture does not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = _model_dir(path)
    card = read_card(directory)
    arch = card.get("architecture")
    if expect_architecture is not None and arch != expect_architecture:
        raise InputError(
            f"model {directory} is architecture {arch!r}, expected {expect_architecture!r}"
        )
    if expect_task is not None and str(card.get("task", "")).upper() != expect_task.upper():
        raise InputError(
            f"model {directory} was trained for task {card.get('task')!r}, not {expect_task!r}; "
            "pass a model of the right task"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise InputError(f"model {directory} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{weights} cannot be read as safetensors ({exc}); re-train it") from exc
    model = build_model(
        arch or "ds18",
        in_channels=int(card.get("in_channels", 3)),
        image_size=int(card.get("image_size", 69)),
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"weights in {weights} do not fit architecture {arch!r}: {str(exc).splitlines()[0]}"
        ) from exc
    model.eval()
    return model, card
