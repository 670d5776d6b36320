import numpy as np
import pandas as pd
import pytest

from morphtransfer.data.store import Store, StoreWriter
from morphtransfer.errors import InputError


def _batch(prefix, n, value):
    rows = pd.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "ra": np.arange(n, dtype=float)})
    imgs = np.full((n, 3, 69, 69), value, dtype=np.float32)
    imgs[:, 0, 0, 0] = np.arange(n)
    return rows, imgs


def test_round_trip_and_batches(tmp_path):
    w = StoreWriter(tmp_path / "s", survey="des", bands=["g", "r", "i"])
    for b in range(3):
        w.append(*_batch(f"b{b}_", 100, float(b)))
    s = Store(tmp_path / "s")
    assert len(s) == 300 and s.survey == "des" and s.bands == ["g", "r", "i"]
    assert list(s.catalog["image_index"]) == list(range(300))
    imgs = s.read_images([250, 5, 120])
    assert imgs.shape == (3, 3, 69, 69)
    assert imgs[:, 1].mean(axis=(1, 2)).tolist() == [2.0, 0.0, 1.0]
    assert imgs[:, 0, 0, 0].tolist() == [50.0, 5.0, 20.0]
    seen = sum(len(p) for p, _ in s.iter_batches(64))
    assert seen == 300


def test_resume_trims_uncommitted_images_and_keeps_committed(tmp_path):
    w = StoreWriter(tmp_path / "s", survey="des", bands=["g", "r", "i"])
    w.append(*_batch("a", 50, 1.0))
    h = Store(tmp_path / "s").content_hash()
    # a crash after the images were written but before the catalogue part was committed
    w.images.resize((80, 3, 69, 69))
    w2 = StoreWriter(tmp_path / "s", survey="des", bands=["g", "r", "i"])
    assert len(w2) == 50 and w2.images.shape[0] == 50
    assert Store(tmp_path / "s").content_hash() == h
    w2.append(*_batch("b", 10, 2.0))
    assert len(Store(tmp_path / "s")) == 60


def test_duplicate_ids_and_bad_pixels_are_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", survey="des", bands=["g", "r", "i"])
    w.append(*_batch("a", 5, 1.0))
    with pytest.raises(InputError, match="duplicate galaxy ids"):
        w.append(*_batch("a", 5, 1.0))
    rows, imgs = _batch("n", 3, 1.0)
    imgs[1, 2, 3, 3] = np.nan
    with pytest.raises(InputError, match="n1"):
        w.append(rows, imgs)
    with pytest.raises(InputError, match="bands"):
        StoreWriter(tmp_path / "s", survey="des", bands=["g", "r", "z"])
    with pytest.raises(InputError, match="not a morphtransfer Store"):
        Store(tmp_path / "nothing")
