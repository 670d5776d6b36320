"""train_model under DDP: 2 CPU processes, gloo, Lightning strategy "ddp".

Lightning's "ddp" re-runs the calling script (sys.argv) once per extra device, which pytest's own
command line cannot be, so the training runs in a small script in a subprocess; that is also how a
user runs it. 80 blob galaxies, 2 epochs, one thread per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import torch

from morphtransfer.data.store import Store, StoreWriter
from morphtransfer.models import DS18, load_model

from test_train import _votes, blob_images

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from morphtransfer.train import Recipe, train_model

    store, out = sys.argv[1], Path(sys.argv[2])
    # progress bar and early stopping on, as the CLI runs it: both take part in collectives
    # float32 (not the "auto" default) so that the test's recomputed validation loss is exact
    recipe = Recipe(max_epochs=2, early_stopping_patience=5, precision="32-true")
    train_model(store, "Q1", recipe=recipe, out=out,
                progress=True, accelerator="cpu", devices=2, strategy="ddp")
    # Lightning sets LOCAL_RANK in the processes it starts; the launching one is rank 0
    rank = int(os.environ.get("LOCAL_RANK", 0))
    (out.parent / f"returned_{rank}.json").write_text(
        json.dumps({"card_written": (out / "card.json").exists()}))
    """
)


def test_ddp_two_cpu_processes_train_one_model(tmp_path):
    imgs, y = blob_images(80, np.random.default_rng(7))
    rows = pd.concat([pd.DataFrame({"id": [f"d{i:03d}" for i in range(80)], "true_disk": y}),
                      _votes(y)], axis=1)
    StoreWriter(tmp_path / "store", survey="sdss", bands=["g", "r", "i"]).append(rows, imgs)
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "model"
    env = {**os.environ, "MORPHTRANSFER_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    card = json.loads((out / "card.json").read_text())
    assert card["world_size"] == 2 and card["strategy"] == "DDPStrategy"
    assert card["batch_size_per_process"] == 15 and card["recipe"]["batch_size"] == 30
    assert (card["n_fit"], card["n_val"], card["epochs_run"]) == (72, 8, 2)
    # both ranks returned, and only after rank 0 had written the model
    for rank in (0, 1):
        assert json.loads((tmp_path / f"returned_{rank}.json").read_text()) == {"card_written": True}

    # each rank takes 36 of the 72 training galaxies in batches of 15: 3 steps an epoch (a batch
    # of 30 per process would be 2)
    log = pd.read_csv(out / "log" / "metrics.csv")
    assert int(log["step"].max()) + 1 == 6

    model, _ = load_model(out)
    torch.manual_seed(0)  # train_model's scratch initialisation (recipe seed 0)
    init = DS18().state_dict()
    trained = model.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert max(float((trained[k] - init[k]).abs().max()) for k in init) > 1e-3

    # the logged validation loss is the loss over both ranks' validation galaxies: recompute it
    # from the kept (best-epoch) weights on all 8 and on rank 0's shard (every other one) alone
    ids = pd.read_csv(out / "training_ids.csv", dtype={"id": str})
    val = ids[ids["role"] == "val"]
    store = Store(tmp_path / "store")
    index = store.catalog.set_index("id").loc[val["id"], "image_index"].to_numpy()
    with torch.no_grad():
        logits = model(torch.from_numpy(store.read_images(index)))
    losses = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor(val["label"].to_numpy(), dtype=torch.float32), reduction="none")
    all_ranks, rank0 = float(losses.mean()), float(losses[0::2].mean())
    assert abs(card["best_val_loss"] - all_ranks) < 1e-4 * max(1.0, all_ranks)
    assert abs(rank0 - all_ranks) > 1e-3  # the check can tell a one-rank figure apart
    per_epoch = pd.read_csv(out / "training_log.csv", index_col=0)
    assert abs(per_epoch.loc[card["best_epoch"], "val_loss"] - all_ranks) < 1e-4 * max(1.0, all_ranks)
