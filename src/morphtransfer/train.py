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
    augment: bool = True
    rotation_deg: float = 45.0
    shift_fraction: float = 0.05
    flips: bool = True
    # Keras ImageDataGenerator zoom_range=[0.75, 1.3]: zx, zy drawn independently
    zoom_range: tuple[float, float] = (0.75, 1.3)
    balance_classes: bool | None = None  # None -> the task's default (Q2, Q3 balanced)
    precision: str = "32-true"  # or "bf16-mixed" (CPU with AVX-512 bf16, or GPU)
    seed: int = 0
    # speed knobs (no effect on the method): NHWC memory layout is faster with oneDNN on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the network (pays a compile time per run)

    def __post_init__(self):
        self.zoom_range = tuple(float(z) for z in self.zoom_range)  # type: ignore[assignment]
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r} unknown; use one of {PRECISIONS}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.max_epochs < 1:
            raise InputError("batch_size and max_epochs must be at least 1")
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
            self.log("train_loss", loss.detach(), on_step=False, on_epoch=True,
                     batch_size=len(y), sync_dist=False, prog_bar=True)
            return loss

        def on_train_epoch_start(self):
            import time

            self._t0, self._n_seen = time.perf_counter(), 0

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self._n_seen += len(batch[1])

        def on_train_epoch_end(self):
            import time

            dt = time.perf_counter() - self._t0
            self.log("train_img_per_s", self._n_seen / max(dt, 1e-9), on_epoch=True)

        def on_validation_epoch_start(self):
            self._val_sum, self._val_n = 0.0, 0

        def validation_step(self, batch, batch_idx):
            x, y, _ = batch
            logits = self.model(self._prepare(x)).float()
            # Keras reports the validation loss without class weights
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
            self._val_sum += float(loss)
            self._val_n += len(y)

        def on_validation_epoch_end(self):
            tot = torch.tensor([self._val_sum, float(self._val_n)], dtype=torch.float64,
                               device=self.device)
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
            return torch.optim.Adam(params, lr=self.recipe.learning_rate)

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
) -> Path:
    """Train one model and write it to ``out`` (weights.safetensors, card.json, log/metrics.csv).

    store: a Store or its path. task: "Q1"/"Q2"/"Q3". rows: the training sample, a subset of
    ``store.catalog`` with a 0/1 ``label_column`` (-1 rows are left out); None takes the robust
    labels of the whole Store. init: a model folder to start from (None: from scratch).
    trainable: "all" (every layer) or "head" (conv layers frozen before the optimiser is built).
    n_train: a seeded random subsample of that many galaxies (before the validation split, which is
    carved from the given rows). callbacks: extra Lightning callbacks. Re-running with the same task, recipe, init and data returns the
    finished model without retraining, and an interrupted run resumes from its last epoch.
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
    if resume_from is None:
        for stale in (out / CKPT_DIR, out / LOG_DIR):
            shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    run_path.write_text(json.dumps(run, indent=2))

    # -- split, weights, loaders ------------------------------------------------------------------
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
    fit_ds = InMemoryImages(img_t[fit_idx], y_t[fit_idx], w_t[fit_idx])
    val_ds = InMemoryImages(img_t[val_idx], y_t[val_idx], w_t[val_idx])

    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    _quiet_lightning()
    _set_threads()
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(recipe.seed)
    fit_loader = torch.utils.data.DataLoader(
        fit_ds, batch_size=recipe.batch_size, shuffle=True, generator=gen, collate_fn=_as_batch
    )
    val_loader = (
        torch.utils.data.DataLoader(val_ds, batch_size=max(recipe.batch_size, 256),
                                    shuffle=False, collate_fn=_as_batch)
        if len(val_ds)
        else None
    )

    if trainable == "head":
        model.freeze_features()  # before the optimiser exists: Adam never sees the conv weights
    model.train()
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if recipe.compile else model
    module = _lightning_module_class()(net, recipe)

    callbacks = list(callbacks or []) + [
        ModelCheckpoint(dirpath=out / CKPT_DIR, filename="last", monitor=None, save_top_k=1,
                        every_n_epochs=1, enable_version_counter=False),
    ]
    if recipe.early_stopping_patience is not None and val_loader is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min",
                                       patience=recipe.early_stopping_patience))
    if progress:
        callbacks.append(_progress_bar())
    trainer = L.Trainer(
        accelerator="auto",
        devices="auto",
        precision=recipe.precision,
        max_epochs=recipe.max_epochs,
        callbacks=callbacks,
        logger=CSVLogger(save_dir=str(out), name="", version=LOG_DIR),
        log_every_n_steps=10_000,  # per-epoch figures only: per-step logging costs time at batch 30
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        deterministic=False,
        default_root_dir=str(out),
    )
    log_csv = out / LOG_DIR / "metrics.csv"
    earlier = pd.read_csv(log_csv) if resume_from and log_csv.exists() else None
    trainer.fit(module, fit_loader, val_loader, ckpt_path=resume_from)
    _tidy_log(out, earlier)
    if not trainer.is_global_zero:
        return out

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
        "n_trainable_parameters": int(count_parameters(model, trainable_only=True)),
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": int(module.best_epoch) + 1 if module.best_epoch >= 0 else None,
        "best_val_loss": None if math.isinf(module.best_val_loss) else float(module.best_val_loss),
        **val_info,
        **(card_extra or {}),
    }
    save_model(final, out, card)
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)  # 40 MB of optimiser state, not needed now
    return out


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
def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    import contextlib

    return contextlib.nullcontext()


@torch.inference_mode()
def predict_tensor(model: nn.Module, images, *, batch_size: int = 512,
                   precision: str = "32-true", channels_last: bool = True) -> np.ndarray:
    """P(positive) for images in memory (n, bands, 69, 69), in eval mode, in batches."""
    x_all = torch.as_tensor(images)
    base = getattr(model, "_orig_mod", model)
    want = (getattr(base, "in_channels", 3), getattr(base, "image_size", 69))
    if x_all.ndim != 4 or tuple(x_all.shape[1:]) != (want[0], want[1], want[1]):
        raise InputError(
            f"images of shape {tuple(x_all.shape)} do not fit the network, which takes "
            f"(n, {want[0]}, {want[1]}, {want[1]}); cut them to 69 x 69 with the model's bands"
        )
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out = np.empty(len(x_all), dtype=np.float32)
    try:
        for s in range(0, len(x_all), batch_size):
            x = x_all[s : s + batch_size].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, precision):
                logits = model(x)
            out[s : s + len(x)] = torch.sigmoid(logits.float()).cpu().numpy()
    finally:
        model.train(was_training)
    return out


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
    precision: str = "32-true",
    channels_last: bool = True,
    progress: bool = False,
    compile: bool = False,
) -> np.ndarray:
    """P(positive) per row (``store.catalog`` order when rows is None) of a model or model folder.

    Images are read from the Store in batches; the next batch is read in a thread while the
    current one is computed (zarr decompression releases the GIL), so reading is mostly hidden.
    precision="bf16-mixed" is about 1.8x faster on CPUs with AVX-512 bf16 (check the AUC with
    ``evaluate``). compile=True (torch.compile with weights frozen into the graph) is a further
    ~1.2x on CPU for 20-70 s of compilation: worth it from some 50,000 galaxies.
    """
    from concurrent.futures import ThreadPoolExecutor

    store = _open_store(store)
    net, _ = _inference_model(model)
    _check_images(store.image_shape, net, store)
    _set_threads()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile:
        net = torch.compile(net.eval(), options={"freezing": True})
    cat = store.catalog if rows is None else rows
    index = cat["image_index"].to_numpy()
    starts = list(range(0, len(index), batch_size))
    out = np.empty(len(index), dtype=np.float32)
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task_id = bar.add_task("predicting", total=len(index))
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(store.read_images, index[0:batch_size]) if starts else None
            for s in starts:
                imgs = nxt.result()
                if s + batch_size < len(index):
                    nxt = pool.submit(store.read_images, index[s + batch_size : s + 2 * batch_size])
                out[s : s + len(imgs)] = predict_tensor(
                    net, imgs, batch_size=batch_size, precision=precision, channels_last=channels_last
                )
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
    precision: str = "32-true",
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
    precision: str = "32-true",
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
