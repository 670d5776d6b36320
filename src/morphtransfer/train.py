"""Training engine: the study's recipe, augmentation, class weights, freezing, checkpoints.

Every experiment of the study is one call of ``train_model`` under a different recipe:

    (0) the base model on the source survey   init=None, trainable="all"   (many labels)
    (b) fine-tune every layer                 init=<base model>, trainable="all"
    (c) fine-tune the dense part only         init=<base model>, trainable="head"
    (d) train from scratch on the small set   init=None, trainable="all"
    (a) apply a model as it is                no training: ``predict_store`` / ``evaluate``

The recipe's defaults are the study's published Keras code (Dominguez Sanchez et al. 2018, 2019):
binary cross-entropy, Adam (lr 1e-3), batch 30, up to 50 epochs, 10% of the training sample for
validation, the weights of the best validation loss kept, early stopping (patience 10) available,
ImageDataGenerator-style augmentation (rotation <= 45 deg, shifts <= 5%, flips, zoom 0.75-1.3) and
balanced class weights for Q2 and Q3.

The engine is Lightning (checkpoints, early stopping, CSV log, progress bar, mixed precision, DDP
when there are GPUs). The training subset's images are loaded into memory once (57 KB each) and
augmented as a batch on the device, so the same code runs on CPU and GPU.

Under DDP (``train_model(devices=N, num_nodes=M)``) the recipe's batch_size stays the batch of one
optimiser step: each of the N x M processes takes batch_size / (N x M) galaxies of it, so the
method (steps per epoch, learning rate per step) does not depend on the device layout; the card
records ``world_size`` and ``batch_size_per_process``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from morphtransfer.errors import InputError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
TRAINABLE = ("all", "head")
BALANCE_BY = ("sampling", "weights")
RUN_FILE = "run.json"  # written when training starts; the card is written when it finishes
LOG_DIR = "log"  # CSV log of the training: log/metrics.csv, one row per epoch
CKPT_DIR = "checkpoints"
TRAINING_IDS_FILE = "training_ids.csv"  # id, label, role (fit/val), p for validation galaxies


@dataclass
class Recipe:
    """Every knob of a training; defaults are the study's published Keras code."""

    learning_rate: float = 1e-3
    batch_size: int = 30
    max_epochs: int = 50
    val_fraction: float = 0.1
    early_stopping_patience: int | None = 10
    # early stopping cannot end a training before this many optimiser steps (0: any time). A
    # few hundred galaxies make ~10 steps per epoch: a patience of 5 epochs would otherwise stop
    # a fine-tune at a low learning rate after ~50 steps, on a validation loss still flat
    min_steps: int = 0
    augment: bool = True
    rotation_deg: float = 45.0
    shift_fraction: float = 0.05
    flips: bool = True
    # Keras ImageDataGenerator zoom_range=[0.75, 1.3]: zx, zy drawn independently
    zoom_range: tuple[float, float] = (0.75, 1.3)
    balance_classes: bool | None = None  # None -> the task's default (Q2, Q3 balanced)
    # how classes are balanced: "sampling" draws each training batch with P(galaxy) proportional
    # to its class weight (with replacement), "weights" multiplies each galaxy's loss by it (Keras
    # class_weight). Both have the same expected loss; see BalancedSampler for why sampling is
    # the default.
    balance_by: str = "sampling"
    # Training precision. float32 by default: bf16-mixed is ~2x faster where bfloat16 is native
    # (AVX512-BF16/AMX CPU, bf16 CUDA GPU) and kept Q1's AUC within 0.005 of float32, but not Q2's
    # (seed-matched change up to 0.006) nor Q3's (mean -0.046 over 2 seeds), measured with
    # benchmarks/bf16_training_check.py; so it is opt-in. "auto": bf16-mixed where native, else
    # 32-true. Resolved when the Recipe is made, so run.json and the card record (and a resume
    # compares) "bf16-mixed" or "32-true". Inference defaults to "auto" (AUC change ~3e-5).
    precision: str = "32-true"
    seed: int = 0
    # speed knobs (no effect on the method): NHWC memory layout is faster with oneDNN on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the network (pays a compile time per run)

    def __post_init__(self):
        self.zoom_range = tuple(float(z) for z in self.zoom_range)  # type: ignore[assignment]
        if self.precision == "auto":
            from morphtransfer.inference import default_device, resolve_precision

            self.precision = resolve_precision("auto", default_device())
        if self.precision not in PRECISIONS:
            raise InputError(
                f"precision {self.precision!r} unknown; use one of {('auto',) + PRECISIONS}")
        if self.balance_by not in BALANCE_BY:
            raise InputError(f"balance_by {self.balance_by!r} unknown; use one of {BALANCE_BY}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.max_epochs < 1:
            raise InputError("batch_size and max_epochs must be at least 1")
        if self.min_steps < 0:
            raise InputError(f"min_steps must be 0 or more, got {self.min_steps}")
        lo, hi = self.zoom_range
        if not 0 < lo <= hi:
            raise InputError(f"zoom_range must be 0 < lo <= hi, got {self.zoom_range}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["zoom_range"] = list(self.zoom_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown recipe keys {unknown}; known: {sorted(known)}")
        return cls(**d)


# ---- augmentation ----------------------------------------------------------------------------
class BatchAugment(nn.Module):
    """Keras ImageDataGenerator's geometric augmentation, on a batch of tensors, on its device.

    One random affine per image: rotation uniform in +-rotation_deg, shift uniform in
    +-shift_fraction of the side, zoom factors zx, zy drawn independently from zoom_range (Keras
    semantics: a zoom factor z samples the input at z times the output coordinate, so the content
    is scaled by 1/z), horizontal and vertical flips with probability 1/2 each, all about the image
    centre; bilinear sampling with edge pixels repeated outside (Keras fill_mode="nearest").
    Folding the flips into the affine makes it one kornia ``warp_affine`` call per batch (about 3x
    cheaper than a chain of kornia augmentation modules on CPU). Random numbers come from torch's
    generator, so a seeded run is reproducible.
    """

    def __init__(self, rotation_deg=45.0, shift_fraction=0.05, zoom_range=(0.75, 1.3), flips=True):
        super().__init__()
        self.rotation_deg = float(rotation_deg)
        self.shift_fraction = float(shift_fraction)
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        self.flips = bool(flips)

    def matrices(self, n: int, height: int, width: int, device, generator=None) -> torch.Tensor:
        """(n, 2, 3) affine matrices mapping input pixel coordinates to output ones."""
        kw = {"device": device, "generator": generator}
        u = torch.rand(n, 7, **kw)  # one draw of 7 numbers per image keeps the stream simple
        theta = torch.deg2rad((2 * u[:, 0] - 1) * self.rotation_deg)
        tx = (2 * u[:, 1] - 1) * self.shift_fraction * width
        ty = (2 * u[:, 2] - 1) * self.shift_fraction * height
        lo, hi = self.zoom_range
        sx = 1.0 / (lo + (hi - lo) * u[:, 3])
        sy = 1.0 / (lo + (hi - lo) * u[:, 4])
        if self.flips:
            sx = torch.where(u[:, 5] < 0.5, -sx, sx)
            sy = torch.where(u[:, 6] < 0.5, -sy, sy)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # M = T(c + t) R S T(-c), c the image centre (pixel-centre convention, align_corners=True)
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        a, b = cos * sx, -sin * sy
        c, d = sin * sx, cos * sy
        m = torch.stack(
            [
                torch.stack([a, b, cx + tx - a * cx - b * cy], dim=-1),
                torch.stack([c, d, cy + ty - c * cx - d * cy], dim=-1),
            ],
            dim=1,
        )
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import warp_affine

        n, _, h, w = x.shape
        m = self.matrices(n, h, w, x.device).to(x.dtype)
        return warp_affine(
            x, m, dsize=(h, w), mode="bilinear", padding_mode="border", align_corners=True
        )


def build_augment(recipe: Recipe) -> BatchAugment | None:
    if not recipe.augment:
        return None
    return BatchAugment(recipe.rotation_deg, recipe.shift_fraction, recipe.zoom_range, recipe.flips)


# ---- data ------------------------------------------------------------------------------------
class InMemoryImages(torch.utils.data.Dataset):
    """Images, labels and per-galaxy loss weights held in memory; batches fetched in one indexing.

    ``__getitems__`` lets the DataLoader take a whole batch with one tensor gather instead of
    stacking 30 single-galaxy tensors; a map-style dataset keeps Lightning's DistributedSampler
    working under DDP.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor):
        self.images, self.labels, self.weights = images, labels, weights

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], self.weights[i]

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.images[idx], self.labels[idx], self.weights[idx]


def _as_batch(batch):
    # __getitems__ already returns a batch; the default collate would try to re-stack it
    return batch


def _open_store(store):
    from morphtransfer.data.store import Store

    return store if isinstance(store, Store) else Store(store)


def labelled_rows(store, task, rows=None, label_column: str = "label") -> tuple[pd.DataFrame, str]:
    """(rows with a 0/1 label column, its name). rows=None: robust labels of the whole Store.

    Galaxies labelled -1 (no robust label) are left out; any other value is an error.
    """
    from morphtransfer.tasks import get_task, robust_labels

    t = get_task(task) if isinstance(task, str) else task
    if rows is None:
        cat = store.catalog
        rows = cat.assign(**{label_column: robust_labels(cat, t).to_numpy()})
    elif label_column not in rows.columns:
        try:  # no label column: the robust labels of these rows' votes
            rows = rows.assign(**{label_column: robust_labels(rows, t).to_numpy()})
        except InputError as exc:
            raise InputError(
                f"rows have no {label_column!r} column and no vote columns to derive robust "
                f"{t.name} labels from; pass label_column= naming a 0/1 column ({exc})"
            ) from exc
    for col in ("id", "image_index"):
        if col not in rows.columns:
            raise InputError(f"training rows lack the {col!r} column; take them from store.catalog")
    lab = pd.to_numeric(rows[label_column], errors="coerce")
    bad = rows.loc[~lab.isin([0, 1, -1]), "id"].astype(str).tolist()
    if bad:
        raise InputError(
            f"galaxies {bad[:10]} have label values other than 0/1 (or -1 = no robust label) in "
            f"{label_column!r}; fix the label column"
        )
    rows = rows.loc[lab.isin([0, 1]).to_numpy()].copy()
    rows[label_column] = rows[label_column].astype("int64")
    return rows.reset_index(drop=True), label_column


def _check_two_classes(y: np.ndarray, what: str, hint: str) -> None:
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos + n_neg == 0:
        raise InputError(f"the {what} is empty: no galaxy with a 0/1 label; {hint}")
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            f"the {what} has a single class ({n_pos} positives, {n_neg} negatives): a classifier "
            f"cannot be trained on it; {hint}"
        )


def split_validation(y: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation galaxies: a seeded split stratified by class.

    Stratified so that a small or unbalanced sample still has both classes in validation (each
    class gives round(val_fraction * n_class) galaxies, at least 1 when it has 2 or more).
    Keras' validation_split takes the last 10% unshuffled; a seeded random split is the fair form.
    """
    mask = np.zeros(y.size, dtype=bool)
    if val_fraction <= 0:
        return mask
    rng = np.random.default_rng([seed, 1])
    for cls in (0, 1):
        idx = np.nonzero(y == cls)[0]
        k = int(round(val_fraction * idx.size))
        if idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        else:
            k = 0
        mask[rng.permutation(idx)[:k]] = True
    return mask


def class_weights(y: np.ndarray, balance: bool) -> dict[int, float]:
    """Keras/scikit-learn 'balanced' weights n / (2 n_c), or 1 for both classes."""
    if not balance:
        return {0: 1.0, 1: 1.0}
    n = y.size
    return {c: float(n / (2.0 * max(int((y == c).sum()), 1))) for c in (0, 1)}


class BalancedSampler(torch.utils.data.Sampler):
    """Class balance by sampling: each epoch, len(weights) draws with replacement, P(i) ~ weights[i].

    With the balanced weights n / (2 n_c) the expected loss of a batch is exactly that of Keras'
    class_weight, but every batch holds about as many positives as negatives. Weighting the loss
    instead puts one or two rare positives (2-6% barred, weight ~9-25) in a batch of 30: the
    gradient is dominated by their noise, and on the simulated pair's SDSS Q3 sample (173 bars in
    3,000) the DS18 network never left the constant output (training loss ln 2 for 15 epochs,
    test AUC 0.50), where sampling reached AUC 0.87 in 8 epochs.
    Seeded by (seed, epoch), so a resumed epoch draws the same galaxies; under DDP every rank draws
    the same sequence and takes every world_size-th draw (Lightning calls ``set_epoch``).
    """

    def __init__(self, weights, seed: int, num_replicas: int = 1, rank: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.seed, self.epoch = int(seed), 0
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.num_samples = math.ceil(len(self.weights) / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples * self.num_replicas,
                                replacement=True, generator=gen)
        return iter(idx[self.rank :: self.num_replicas].tolist())


def subset_hash_arrays(ids, labels, images: np.ndarray) -> str:
    """The same digest as ``Store.subset_hash(rows, label_column)``, from arrays in memory."""
    h = hashlib.sha256()
    h.update("\n".join(pd.Series(ids).astype(str)).encode())
    h.update(np.asarray(labels).astype("int64").tobytes())
    h.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    return h.hexdigest()


def _check_images(images_shape, model: nn.Module, store) -> None:
    want = (getattr(model, "in_channels", 3), getattr(model, "image_size", 69))
    want_shape = (want[0], want[1], want[1])
    if tuple(images_shape) != want_shape:
        raise InputError(
            f"Store {store.path} holds images of shape {tuple(images_shape)}, but the network takes "
            f"{want_shape} (bands x 69 x 69); re-ingest the cutouts at 69 x 69 with the same bands"
        )


# ---- the Lightning module --------------------------------------------------------------------
def _lightning_module_class():
    import lightning as L

    class DS18Module(L.LightningModule):
        """Loss, optimiser, augmentation on the device, best-validation-loss weights kept."""

        def __init__(self, model: nn.Module, recipe: Recipe):
            super().__init__()
            self.model = model
            self.recipe = recipe
            self.augment = build_augment(recipe)
            self.best_val_loss = math.inf
            self.best_epoch = -1
            self.best_state: dict[str, torch.Tensor] | None = None
            self._val_sum = 0.0
            self._val_n = 0

        def forward(self, x):
            return self.model(x)

        def _prepare(self, x):
            if self.recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x

        def training_step(self, batch, batch_idx):
            x, y, w = batch
            if self.augment is not None:
                with torch.no_grad():
                    x = self.augment(x)
            logits = self.model(self._prepare(x)).float()
            per_galaxy = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
            # Keras class_weight: each galaxy's loss times its class weight, mean over the batch
            loss = (per_galaxy * w).mean()
            # the epoch's mean is logged in on_train_epoch_end, reduced over the ranks there: a
            # self.log(sync_dist=True) figure is reduced when first read, and the progress bar
            # (rank 0 only) reads it, which under DDP left rank 0 in a collective alone
            self._train_sum += loss.detach() * len(y)
            return loss

        def on_train_start(self):
            if self.trainer.world_size > 1:
                # seed_everything gave every rank the same torch stream: without this, rank r's
                # i-th image would get the same rotation, flips and dropout mask on every rank
                rank_seed = np.random.SeedSequence([self.recipe.seed, self.global_rank])
                torch.manual_seed(int(rank_seed.generate_state(1)[0]))

        def on_train_epoch_start(self):
            import time

            self._t0, self._n_seen = time.perf_counter(), 0
            self._train_sum = torch.zeros((), dtype=torch.float64, device=self.device)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self._n_seen += len(batch[1])

        def on_train_epoch_end(self):
            import time

            dt = time.perf_counter() - self._t0
            # loss sum and images over every rank, one collective on every rank in the same
            # place (the identity in a single process)
            tot = torch.stack([self._train_sum,
                               torch.tensor(float(self._n_seen), dtype=torch.float64,
                                            device=self.device)])
            tot = self.trainer.strategy.reduce(tot, reduce_op="sum")
            n = max(float(tot[1]), 1.0)
            self.log("train_loss", float(tot[0]) / n, on_epoch=True, sync_dist=False, prog_bar=True)
            self.log("train_img_per_s", n / max(dt, 1e-9), on_epoch=True, sync_dist=False)

        def on_validation_epoch_start(self):
            self._val_sum, self._val_n = 0.0, 0

        def validation_step(self, batch, batch_idx):
            x, y, w = batch
            logits = self.model(self._prepare(x)).float()
            # the class-weighted mean (w: the training's class weights; 1 without balance): the
            # held-out estimate of the loss being minimised. Keras reports the validation loss
            # without class weights; for a rare class that figure rewards the epochs whose P
            # sits nearest the validation prior rather than the best-separating ones, and early
            # stopping on it ended the paper preset's SDSS bar model (504 bars in 10,000) after
            # its second epoch while its training loss still fell.
            per_galaxy = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
            self._val_sum += float((per_galaxy * w).sum())
            self._val_n += float(w.sum())

        def on_validation_epoch_end(self):
            tot = torch.tensor([self._val_sum, float(self._val_n)], dtype=torch.float64,
                               device=self.device)
            # loss sum and count over every rank's shard (unrepeated: each validation galaxy
            # once), so every rank gets the same number and agrees on the best epoch, the kept
            # weights and early stopping; the logged val_loss is this all-rank figure
            tot = self.trainer.strategy.reduce(tot, reduce_op="sum")
            val_loss = float(tot[0] / max(float(tot[1]), 1.0))
            self.log("val_loss", val_loss, on_epoch=True, sync_dist=False, prog_bar=True)
            if self.trainer.sanity_checking:
                return
            if val_loss < self.best_val_loss:
                self.best_val_loss = val_loss
                self.best_epoch = int(self.current_epoch)
                # keys as the plain network's (torch.compile prefixes them with _orig_mod.)
                self.best_state = {k.removeprefix("_orig_mod."): v.detach().to("cpu", copy=True)
                                   for k, v in self.model.state_dict().items()}
            self.log("best_val_loss", self.best_val_loss, on_epoch=True, sync_dist=False)

        def configure_optimizers(self):
            # only trainable parameters: in mode "head" the conv layers were frozen before this
            params = [p for p in self.model.parameters() if p.requires_grad]
            # fused: one pass over the 2.6 M parameters instead of ~10 (6.7 -> 1.9 ms of CPU a
            # step, single thread); the same update up to float rounding (7e-9 after one step)
            fused = all(p.device.type in ("cpu", "cuda") for p in params)
            return torch.optim.Adam(params, lr=self.recipe.learning_rate, fused=fused)

        def on_save_checkpoint(self, checkpoint):
            checkpoint["morphtransfer_best"] = {
                "val_loss": self.best_val_loss, "epoch": self.best_epoch, "state": self.best_state,
            }

        def on_load_checkpoint(self, checkpoint):
            best = checkpoint.get("morphtransfer_best") or {}
            self.best_val_loss = best.get("val_loss", math.inf)
            self.best_epoch = best.get("epoch", -1)
            self.best_state = best.get("state")

    return DS18Module


def _progress_bar():
    from lightning.pytorch.callbacks import RichProgressBar

    class Bar(RichProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)  # the CSV log's folder name, not a figure
            return items

    return Bar(leave=True)


def _set_threads():
    # one intra-op pool the size of the machine's cores; MORPHTRANSFER_THREADS overrides
    n = os.environ.get("MORPHTRANSFER_THREADS")
    if n:
        torch.set_num_threads(int(n))


def _quiet_lightning():
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LightningModule.*has parameters that were not.*")
    warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*treespec.*")
    warnings.filterwarnings("ignore", message=r".*no `val_dataloader`.*")
    # a resumed run keeps its earlier epochs: _tidy_log merges them back into metrics.csv
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory.*")
    # val_loss is reduced over the ranks by the module itself (sum of losses / count)
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed.*")


# ---- device layout (DDP) ---------------------------------------------------------------------
def _trainer(layout: dict, **kwargs):
    """L.Trainer with the device layout; Lightning's complaints about it as InputError."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**layout, **kwargs)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise InputError(
            f"cannot run training on accelerator={layout['accelerator']!r}, "
            f"devices={layout['devices']!r}, num_nodes={layout['num_nodes']!r}, "
            f"strategy={layout['strategy']!r}: {exc}"
        ) from exc


def _check_layout(trainer, recipe: Recipe, n_val: int) -> None:
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    world_size = int(trainer.world_size)
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        # spawn/fork launchers train in worker processes and hand back only the last weights:
        # the kept best-validation weights, best epoch and card would be lost
        raise InputError(
            f"strategy {type(trainer.strategy).__name__} (spawn/fork, e.g. 'ddp_spawn' or a "
            "notebook's 'ddp_notebook') is not supported: run train_model from a script with "
            "strategy='ddp' (Lightning re-runs the script per device), or launch it with torchrun"
        )
    if world_size > 1 and recipe.batch_size % world_size:
        raise InputError(
            f"batch_size {recipe.batch_size} is the batch of one optimiser step, split over "
            f"{world_size} processes, and does not divide by {world_size}: choose a batch size "
            f"that does (e.g. {recipe.batch_size + (-recipe.batch_size) % world_size}) or "
            "another number of devices"
        )
    if world_size > 1 and 0 < n_val < world_size:
        raise InputError(
            f"{n_val} validation galaxies cannot be shared by {world_size} processes: raise "
            "val_fraction or the training sample, or use fewer devices"
        )


def _loaders(fit_ds, val_ds, recipe: Recipe, world_size: int, rank: int, sample_weights=None):
    """(training loader, validation loader or None) of this process.

    sample_weights: class balance by sampling (BalancedSampler) instead of a shuffle.

    One process: a seeded shuffle of the whole training part in batches of ``batch_size``.
    DDP: every rank the same seeded permutation (Lightning calls ``set_epoch`` each epoch) and
    its own shard of it (padded with a few repeats to equal length, as DistributedSampler does,
    so ranks take the same number of steps), in batches of batch_size / world_size; validation
    is split without repeats so the all-rank loss counts every galaxy once.
    """
    from torch.utils.data import DataLoader

    per_process = recipe.batch_size // world_size
    if sample_weights is not None:  # class balance by sampling (BalancedSampler), any world size
        sampler = BalancedSampler(sample_weights, recipe.seed, world_size, rank)
        fit = DataLoader(fit_ds, batch_size=per_process, sampler=sampler, collate_fn=_as_batch)
    elif world_size == 1:
        gen = torch.Generator().manual_seed(recipe.seed)
        fit = DataLoader(fit_ds, batch_size=per_process, shuffle=True, generator=gen,
                         collate_fn=_as_batch)
    else:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(fit_ds, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=recipe.seed)
        fit = DataLoader(fit_ds, batch_size=per_process, sampler=sampler, collate_fn=_as_batch)
    val_sampler = None
    if world_size > 1 and len(val_ds):
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        val_sampler = UnrepeatedDistributedSampler(val_ds, num_replicas=world_size, rank=rank,
                                                   shuffle=False)
    val = None
    if len(val_ds):
        val = DataLoader(val_ds, batch_size=max(per_process, 256), shuffle=False,
                         sampler=val_sampler, collate_fn=_as_batch)
    return fit, val


def _wait_for_rank_zero(trainer) -> None:
    # every rank returns with the model on disk (a script's next line can read it); a no-op in
    # a single process
    if int(trainer.world_size) > 1:
        trainer.strategy.barrier("morphtransfer_model_written")


# ---- training --------------------------------------------------------------------------------
def _same_run(a: dict, b: dict) -> bool:
    keys = ("task", "recipe", "training_set_hash", "init_model_id", "trainable")
    return all(a.get(k) == b.get(k) for k in keys)


def train_model(
    store,
    task,
    *,
    rows: pd.DataFrame | None = None,
    label_column: str = "label",
    init=None,
    trainable: str = "all",
    recipe: Recipe | None = None,
    out,
    n_train: int | None = None,
    card_extra: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
    callbacks: list | None = None,
    accelerator: str = "auto",
    devices: int | str | list = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> Path:
    """Train one model and write it to ``out`` (weights.safetensors, card.json, log/metrics.csv).

    store: a Store or its path. task: "Q1"/"Q2"/"Q3". rows: the training sample, a subset of
    ``store.catalog`` with a 0/1 ``label_column`` (-1 rows are left out); None takes the robust
    labels of the whole Store. init: a model folder to start from (None: from scratch).
    trainable: "all" (every layer) or "head" (conv layers frozen before the optimiser is built).
    n_train: a seeded random subsample of that many galaxies (before the validation split, which is
    carved from the given rows). callbacks: extra Lightning callbacks. Re-running with the same
    task, recipe, init and data returns the finished model without retraining, and an interrupted
    run resumes from its last epoch.

    accelerator, devices, num_nodes, strategy: where it runs, as Lightning's Trainer takes them
    (default: one process on the best accelerator). They are not in the recipe because they are
    not the method: ``recipe.batch_size`` is the batch of one optimiser step (the study's 30) and
    is split over the processes (batch_size / world size each, which must divide), so a run on
    8 GPUs takes the same steps as on one, and a run resumes on another device layout.
    devices=N > 1 (or num_nodes > 1) is DDP: Lightning re-runs the calling script once per extra
    device (strategy "ddp"; torchrun/SLURM launches work the same), so call ``train_model`` from
    a script, not a notebook. Every rank draws the same subsample, validation split and class
    weights (seeded); rank 0 alone writes files; every rank returns once the model is written.
    """
    from morphtransfer.models import build_model, count_parameters, load_model, save_model
    from morphtransfer.tasks import get_task

    recipe = recipe or Recipe()
    if isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    t = get_task(task) if isinstance(task, str) else task
    if trainable not in TRAINABLE:
        raise InputError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    if trainable == "head" and init is None:
        raise InputError(
            "trainable='head' freezes the convolutional layers, which only makes sense when starting "
            "from a trained model: pass init=<model folder> (experiment c)"
        )
    store = _open_store(store)
    out = Path(out)
    hint = f"check the task ({t.name}) and the labels of the rows taken from {store.path}"

    # -- the sample --------------------------------------------------------------------------
    rows, label_column = labelled_rows(store, t, rows, label_column)
    _check_two_classes(rows[label_column].to_numpy(), "training set", hint)
    if n_train is not None:
        if n_train < 2:
            raise InputError(f"n_train={n_train}: a training set needs at least 2 galaxies")
        if n_train > len(rows):
            raise InputError(
                f"n_train={n_train} but only {len(rows)} labelled galaxies are available for "
                f"{t.name} in {store.path}; lower --n-train"
            )
        pick = np.sort(np.random.default_rng([recipe.seed, 0]).choice(len(rows), n_train, replace=False))
        rows = rows.iloc[pick].reset_index(drop=True)
        _check_two_classes(rows[label_column].to_numpy(), f"subsample of n_train={n_train}",
                           "raise n_train or change the seed")
    y_all = rows[label_column].to_numpy().astype("int64")

    # -- the network -------------------------------------------------------------------------
    init_card: dict = {}
    if init is not None:
        model, init_card = load_model(init, expect_task=t.name)
    else:
        torch.manual_seed(recipe.seed)  # the scratch weights are part of what the seed fixes
        model = build_model("ds18", in_channels=len(store.bands))
    _check_images(store.image_shape, model, store)

    images = store.read_images(rows["image_index"].to_numpy())
    data_hash = subset_hash_arrays(rows["id"], y_all, images)
    run = {
        "task": t.name,
        "recipe": recipe.to_dict(),
        "training_set_hash": data_hash,
        "init_model_id": init_card.get("model_id"),
        "trainable": trainable,
    }

    # -- resume --------------------------------------------------------------------------------
    card_path, run_path = out / "card.json", out / RUN_FILE
    if card_path.exists() and (out / "weights.safetensors").exists():
        old = json.loads(card_path.read_text())
        if _same_run(old, run) and not overwrite:
            return out
        if not overwrite:
            raise InputError(
                f"{out} already holds a model trained differently (task, recipe, init or data "
                "differ); choose another --out or pass overwrite=True to replace it"
            )
    ckpt = out / CKPT_DIR / "last.ckpt"
    resume_from = None
    if run_path.exists() and ckpt.exists() and not overwrite:
        if _same_run(json.loads(run_path.read_text()), run):
            resume_from = str(ckpt)

    # -- split, weights (functions of the rows and the seed only: every DDP rank gets the same) --
    is_val = split_validation(y_all, recipe.val_fraction, recipe.seed)
    y_fit = y_all[~is_val]
    _check_two_classes(y_fit, "training part (after the validation split)", hint)
    balance = t.balance_classes if recipe.balance_classes is None else recipe.balance_classes
    cw = class_weights(y_fit, balance)
    img_t = torch.from_numpy(images)
    y_t = torch.from_numpy(y_all.astype("float32"))
    w_t = torch.where(y_t > 0.5, cw[1], cw[0]).float()
    fit_idx = torch.from_numpy(np.nonzero(~is_val)[0])
    val_idx = torch.from_numpy(np.nonzero(is_val)[0])
    sample_weights = None
    if balance and recipe.balance_by == "sampling":
        # the class weights choose the galaxies instead of scaling their loss
        sample_weights = w_t[fit_idx].clone()
        w_t = torch.ones_like(w_t)
    fit_ds = InMemoryImages(img_t[fit_idx], y_t[fit_idx], w_t[fit_idx])
    # validation always weighs galaxies by the class weights (whichever way training balances)
    val_w = torch.where(y_t[val_idx] > 0.5, cw[1], cw[0]).float()
    val_ds = InMemoryImages(img_t[val_idx], y_t[val_idx], val_w)

    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    _quiet_lightning()
    _set_threads()
    L.seed_everything(recipe.seed, workers=True, verbose=False)

    # -- the trainer, built before any file is written: it knows this process's rank ------------
    callbacks = list(callbacks or []) + [
        ModelCheckpoint(dirpath=out / CKPT_DIR, filename="last", monitor=None, save_top_k=1,
                        every_n_epochs=1, enable_version_counter=False),
    ]
    if recipe.early_stopping_patience is not None and len(val_ds):
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min",
                                       patience=recipe.early_stopping_patience))
    if progress:
        callbacks.append(_progress_bar())
    trainer = _trainer(
        dict(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy),
        precision=recipe.precision,
        max_epochs=recipe.max_epochs,
        min_steps=recipe.min_steps or None,  # Lightning: early stopping waits for it
        callbacks=callbacks,
        logger=CSVLogger(save_dir=str(out), name="", version=LOG_DIR),
        log_every_n_steps=10_000,  # per-epoch figures only: per-step logging costs time at batch 30
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        deterministic=False,
        default_root_dir=str(out),
        # the samplers are ours (below): Lightning's would pad the validation set with repeats
        use_distributed_sampler=False,
    )
    world_size = int(trainer.world_size)
    _check_layout(trainer, recipe, len(val_ds))
    if trainer.is_global_zero:
        # under torchrun/SLURM the other ranks decide resume_from at the same time: they can see
        # the checkpoints gone or the new run.json, and both say "no resume" as here
        if resume_from is None:
            for stale in (out / CKPT_DIR, out / LOG_DIR):
                shutil.rmtree(stale, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        run_path.write_text(json.dumps(run, indent=2))

    fit_loader, val_loader = _loaders(fit_ds, val_ds, recipe, world_size, int(trainer.global_rank),
                                      sample_weights)
    if trainable == "head":
        model.freeze_features()  # before the optimiser exists: Adam never sees the conv weights
    model.train()
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if recipe.compile else model
    module = _lightning_module_class()(net, recipe)

    log_csv = out / LOG_DIR / "metrics.csv"
    earlier = pd.read_csv(log_csv) if resume_from and log_csv.exists() else None
    trainer.fit(module, fit_loader, val_loader, ckpt_path=resume_from)
    if not trainer.is_global_zero:
        _wait_for_rank_zero(trainer)  # returns when rank 0 has written the model
        return out
    _tidy_log(out, earlier)

    # -- the kept weights: best validation loss (or the last epoch without validation) ------------
    final = model  # the uncompiled module shares its parameters with the compiled one
    if module.best_state is not None:
        final.load_state_dict(module.best_state)
    final = final.to("cpu").to(memory_format=torch.contiguous_format).eval()

    val_info: dict = {}
    roles = np.where(is_val, "val", "fit")
    p_val = np.full(len(rows), np.nan)
    if len(val_ds):
        from morphtransfer import metrics

        p = predict_tensor(final, val_ds.images, precision=recipe.precision)
        p_val[is_val] = p
        yv = y_all[is_val]
        val_info["val_auc"] = metrics.roc_auc(yv, p)
        val_info["val_metrics"] = metrics.binary_metrics(yv, p, 0.5)
        if len(np.unique(yv)) == 2:
            val_info["p_threshold_val"] = metrics.choose_threshold(yv, p)
        if not math.isinf(module.best_val_loss):
            # a training that ends where it began, on the loss of one constant P for every galaxy,
            # has learnt nothing of its labels: say so now, not after the study built on it
            chance = chance_val_loss(yv, val_ds.weights.numpy())
            val_info["chance_val_loss"] = chance
            val_info["left_plateau"] = bool(module.best_val_loss < PLATEAU_FRACTION * chance)
            if init is None and not val_info["left_plateau"]:
                warnings.warn(
                    f"the model trained from scratch into {out} has not left the loss plateau: its "
                    f"best validation loss {module.best_val_loss:.4f} is not "
                    f"{100 * (1 - PLATEAU_FRACTION):.0f}% below {chance:.4f}, the loss of one constant "
                    f"P for every galaxy ({len(yv)} validation galaxies, AUC "
                    f"{val_info['val_auc']:.3f}), so it has learnt little of its labels. A lower "
                    "learning_rate (1e-4 for a rare class such as bars), more epochs (max_epochs, "
                    "min_steps) or a fine-tune from a trained model help",
                    stacklevel=2)
    from morphtransfer.models import active_feature_channels

    # a dead network (no feature channel fires) gives one P to every galaxy and cannot recover
    probe = val_ds.images if len(val_ds) else fit_ds.images
    val_info["active_feature_channels"] = active_feature_channels(final, probe)
    if val_info["active_feature_channels"] == 0:
        warnings.warn(
            f"the network trained into {out} is dead: no channel of its last convolutional layer "
            f"fires on its {'validation' if len(val_ds) else 'training'} galaxies, so it gives "
            "every galaxy the same P: it shut its features down before finding the signal in its "
            "labels (more galaxies, a lower learning_rate, or for a from-scratch training a "
            "fine-tune from a trained model, help)",
            stacklevel=2)
    pd.DataFrame({"id": rows["id"].astype(str), "label": y_all, "role": roles, "p": p_val}).to_csv(
        out / TRAINING_IDS_FILE, index=False
    )
    card = {
        **run,
        "survey": store.survey,
        "bands": store.bands,
        "store": str(store.path),
        "label_column": label_column,
        "mode": "scratch" if init is None else f"fine-tune {trainable}",
        "init_model": None if init is None else str(init),
        "init_survey": init_card.get("survey"),
        "n_train": int(len(rows)),
        "n_fit": int((~is_val).sum()),
        "n_val": int(is_val.sum()),
        "n_pos": int(y_all.sum()),
        "class_weights": {str(k): v for k, v in cw.items()},
        # what best_val_loss (model selection, early stopping) averages: see validation_step
        "val_loss": "class-weighted mean" if balance else "mean",
        "n_trainable_parameters": int(count_parameters(model, trainable_only=True)),
        # the device layout: not the method (recipe.batch_size is the batch of one step, split
        # over the world_size processes), recorded to tell where a model was trained
        "world_size": world_size,
        "num_nodes": int(trainer.num_nodes),
        "batch_size_per_process": recipe.batch_size // world_size,
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "strategy": type(trainer.strategy).__name__,
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": int(module.best_epoch) + 1 if module.best_epoch >= 0 else None,
        "best_val_loss": None if math.isinf(module.best_val_loss) else float(module.best_val_loss),
        **val_info,
        **(card_extra or {}),
    }
    save_model(final, out, card)
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)  # 40 MB of optimiser state, not needed now
    _wait_for_rank_zero(trainer)
    return out


# A training "has left the loss plateau" when its best validation loss is under this fraction of
# the loss of the best constant P (chance_val_loss). From scratch, the quick run's SDSS models
# (simulator version 9) ended at 0.32 / 0.32 / 0.74 of it (Q1 / Q2 / Q3), its (d) models at
# 0.96-1.02, those with P nearly the same for every galaxy at 0.997-1.002; the paper preset's
# 10,000-galaxy SDSS bar model at learning rate 1e-3 ended at 0.997 (validation AUC 0.59). Only
# trainings from scratch are warned about: a fine-tune starts off the plateau.
PLATEAU_FRACTION = 0.99


def chance_val_loss(labels, weights=None) -> float:
    """The validation loss (weighted mean binary cross-entropy, as validation_step computes it)
    of the best constant P: the entropy of the weighted positive share. ln 2 when the class
    weights balance the two classes."""
    y = np.asarray(labels, dtype="float64")
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype="float64")
    q = float((w * y).sum() / w.sum())
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return float(-(q * math.log(q) + (1 - q) * math.log(1 - q)))


def _tidy_log(out: Path, earlier: pd.DataFrame | None) -> None:
    """log/metrics.csv (Lightning's, kept whole across a resume) -> training_log.csv, one row per epoch."""
    log_csv = out / LOG_DIR / "metrics.csv"
    if not log_csv.exists():
        return
    log = pd.read_csv(log_csv)
    if earlier is not None and "epoch" in earlier.columns and len(log):
        log = pd.concat([earlier[earlier["epoch"] < log["epoch"].min()], log], ignore_index=True)
        log.to_csv(log_csv, index=False)
    if "epoch" not in log.columns or log.empty:
        return
    per_epoch = log.drop(columns=[c for c in ("step",) if c in log.columns]).groupby("epoch").first()
    per_epoch.index = per_epoch.index + 1  # epochs counted from 1, as in the card's best_epoch
    per_epoch.to_csv(out / "training_log.csv")


# ---- inference -------------------------------------------------------------------------------
def predict_tensor(model: nn.Module, images, *, batch_size: int = 512,
                   precision: str = "32-true", channels_last: bool = True) -> np.ndarray:
    """P(positive) for images in memory (n, bands, 69, 69), in eval mode, in batches.

    The loop is ``inference.probabilities`` (shared with ``predict_store`` and the catalogue
    engine): an eval-mode copy of the model in the precision's dtype ("auto": bf16 where native),
    so the caller's model keeps its weights and train/eval flag. On CPU the network runs
    micro-batches of ``inference.CPU_COMPUTE_BATCH`` (at most batch_size); on a GPU batch_size.
    """
    from morphtransfer.inference import probabilities

    x_all = torch.as_tensor(images)
    base = getattr(model, "_orig_mod", model)
    want = (getattr(base, "in_channels", 3), getattr(base, "image_size", 69))
    if x_all.ndim != 4 or tuple(x_all.shape[1:]) != (want[0], want[1], want[1]):
        raise InputError(
            f"images of shape {tuple(x_all.shape)} do not fit the network, which takes "
            f"(n, {want[0]}, {want[1]}, {want[1]}); cut them to 69 x 69 with the model's bands"
        )
    return probabilities(model, x_all, precision=precision, batch=batch_size,
                         channels_last=channels_last)


def _inference_model(model, expect_task=None) -> tuple[nn.Module, dict]:
    from morphtransfer.models import load_model

    if isinstance(model, nn.Module):
        return model, {}
    m, card = load_model(model, expect_task=expect_task)
    if torch.cuda.is_available():
        m = m.cuda()
    return m, card


def predict_store(
    model,
    store,
    rows: pd.DataFrame | None = None,
    *,
    batch_size: int = 512,
    precision: str = "auto",
    channels_last: bool = True,
    progress: bool = False,
    compile: bool = False,
) -> np.ndarray:
    """P(positive) per row (``store.catalog`` order when rows is None) of a model or model folder.

    Images are read from the Store in batches of batch_size; the next batch is read in a thread
    while the current one is computed (zarr decompression releases the GIL), so reading is mostly
    hidden. The network is ``inference.run_prepared`` (micro-batches of 32 on CPU) on a copy of
    the model: precision "auto" is bfloat16 weights where bf16 is native (about 1.9x float32 on
    CPUs with AVX512-BF16, AUC change 2.6e-5), else float32; "32-true" is always float32.
    compile=True (torch.compile with weights frozen into the graph) may add speed for 20-70 s
    of compilation.
    """
    from concurrent.futures import ThreadPoolExecutor

    from morphtransfer.inference import prepare_model, run_prepared

    store = _open_store(store)
    net, _ = _inference_model(model)
    _check_images(store.image_shape, net, store)
    _set_threads()
    net = prepare_model(net, precision, channels_last=channels_last)
    if compile:
        net = torch.compile(net, options={"freezing": True})
    cat = store.catalog if rows is None else rows
    index = cat["image_index"].to_numpy()
    starts = list(range(0, len(index), batch_size))
    out = np.empty(len(index), dtype=np.float32)
    bar = None
    if progress:
        from morphtransfer.progress import Progress

        bar = Progress(transient=True, unit="galaxies")
        bar.start()
        task_id = bar.add_task("predicting", total=len(index))
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(store.read_images, index[0:batch_size]) if starts else None
            for s in starts:
                imgs = nxt.result()
                if s + batch_size < len(index):
                    nxt = pool.submit(store.read_images, index[s + batch_size : s + 2 * batch_size])
                out[s : s + len(imgs)] = run_prepared([net], imgs, channels_last=channels_last)[0]["p"]
                if bar is not None:
                    bar.update(task_id, advance=len(imgs))
    finally:
        if bar is not None:
            bar.stop()
    return out


# ---- evaluation ------------------------------------------------------------------------------
def evaluation_rows(model, store, task, rows=None, label_column=None,
                    exclude_training: bool = True) -> tuple[pd.DataFrame, str, int]:
    """(labelled rows to score, label column, number of training galaxies left out).

    rows=None: the robust labels of the whole Store; rows without ``label_column``: the robust
    labels of those rows. Galaxies listed in the model's training_ids.csv are left out.
    """
    store = _open_store(store)
    rows, col = labelled_rows(store, task, rows, label_column or "label")
    n_excluded = 0
    if exclude_training and not isinstance(model, nn.Module):
        ids_file = Path(model) / TRAINING_IDS_FILE
        if ids_file.exists():
            used = set(pd.read_csv(ids_file, dtype={"id": str})["id"])
            keep = ~rows["id"].astype(str).isin(used)
            n_excluded = int((~keep).sum())
            rows = rows.loc[keep.to_numpy()].reset_index(drop=True)
    return rows, col, n_excluded


def evaluate_model(
    model,
    store,
    task,
    *,
    rows: pd.DataFrame | None = None,
    label_column: str | None = None,
    p_thresholds=(0.5, "validation"),
    n_boot: int = 1000,
    seed: int = 0,
    exclude_training: bool = True,
    precision: str = "auto",
    progress: bool = False,
) -> dict:
    """Scores at several thresholds from one pass of inference.

    p_thresholds: numbers, and/or "validation" for the threshold chosen on the model's validation
    data (stored in its card). Returns {"n_excluded_training", "task", "thresholds": [metrics...],
    "roc": (fpr, tpr, thresholds)}. Galaxies the model was trained on are left out by default.
    """
    from morphtransfer import metrics
    from morphtransfer.tasks import get_task

    t = get_task(task) if isinstance(task, str) else task
    store = _open_store(store)
    net, card = _inference_model(model, expect_task=t.name)
    rows, col, n_excluded = evaluation_rows(model, store, t, rows, label_column, exclude_training)
    y = rows[col].to_numpy()
    _check_two_classes(y, "evaluation set", f"check the task ({t.name}) and the Store {store.path}")
    p = predict_store(net, store, rows, precision=precision, progress=progress)
    results = []
    for thr in p_thresholds:
        if thr == "validation":
            if "p_threshold_val" not in card:
                continue
            m = metrics.evaluate_predictions(y, p, card["p_threshold_val"], n_boot, seed)
            m["threshold_rule"] = "validation (Youden)"
        else:
            m = metrics.evaluate_predictions(y, p, float(thr), n_boot, seed)
            m["threshold_rule"] = "fixed"
        results.append(m)
    return {
        "task": t.name,
        "n_excluded_training": n_excluded,
        "thresholds": results,
        "roc": metrics.roc_curve(y, p),
        "p": p,
        "y": y,
        "ids": rows["id"].astype(str).to_numpy(),
    }


def evaluate(
    model,
    store,
    task,
    *,
    rows: pd.DataFrame | None = None,
    label_column: str | None = None,
    p_threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    exclude_training: bool = True,
    precision: str = "auto",
) -> dict:
    """metrics.evaluate_predictions of a model on robust labels (or ``label_column`` of rows).

    The figures at ``p_threshold`` (+ bootstrap 95% bounds); galaxies the model was trained on
    (listed in its training_ids.csv) are left out unless exclude_training=False.
    """
    res = evaluate_model(model, store, task, rows=rows, label_column=label_column,
                         p_thresholds=(p_threshold,), n_boot=n_boot, seed=seed,
                         exclude_training=exclude_training, precision=precision)
    out = res["thresholds"][0]
    out["n_excluded_training"] = res["n_excluded_training"]
    return out


def select_split(store, split: str | None) -> pd.DataFrame | None:
    """Catalogue rows whose ``split`` column equals ``split`` (None: every row, returned as None)."""
    if split is None:
        return None
    cat = _open_store(store).catalog
    if "split" not in cat.columns:
        raise InputError(f"Store {store} has no 'split' column; drop --split or add one at ingest")
    rows = cat[cat["split"].astype(str) == split]
    if rows.empty:
        values = sorted(cat["split"].astype(str).unique())[:10]
        raise InputError(f"no galaxy of Store {store} has split {split!r}; its values: {values}")
    return rows
