"""`predict --engine ray` on a local 2-CPU Ray started by the test: same catalogue as local."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from test_predict import _make_models, _make_store

from morphtransfer.predict import parts_dir, predict_catalog, read_provenance, rejects_path

ray = pytest.importorskip("ray")


def test_ray_engine_matches_local_engine(tmp_path):
    store = _make_store(tmp_path / "store", 96, seed=11)
    models = _make_models(tmp_path, tasks=("Q1", "Q2"))
    pd.DataFrame({"id": [f"DES{i:05d}" for i in range(0, 96, 2)] + ["MISSING"]}).to_csv(
        tmp_path / "sel.csv", index=False
    )
    kw = dict(store=store, catalog=tmp_path / "sel.csv", shard_size=16, batch_size=8,
              mc_dropout=2, progress=False, precision="32-true")
    local = pd.read_parquet(predict_catalog(models, tmp_path / "local.parquet", **kw))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = predict_catalog(models, tmp_path / "ray.parquet", engine="ray", num_workers=2, **kw)
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    distributed = pd.read_parquet(out)
    assert len(distributed) == 48 and distributed["id"].is_unique
    # a shard is computed the same way on any engine (same micro-batches, same MC-dropout masks);
    # only the float32 rounding of 1-thread actors vs the 2-thread local run may differ
    pd.testing.assert_frame_equal(distributed, local, check_exact=False, rtol=1e-5, atol=1e-6)
    assert np.abs(distributed["p_Q1_std"] - local["p_Q1_std"]).max() < 1e-6
    assert read_provenance(out)["engine"] == "ray"
    assert pd.read_csv(rejects_path(out))["id"].tolist() == ["MISSING"]
    assert not parts_dir(out).exists()
    assert np.isfinite(distributed["p_Q2_std"]).all()
