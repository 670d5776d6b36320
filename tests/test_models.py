import json

import pytest
import torch

from morphtransfer.errors import InputError
from morphtransfer.models import DS18, active_feature_channels, count_parameters, load_model, save_model


def test_ds18_parameter_count_and_layer_shapes():
    m = DS18().eval()
    assert count_parameters(m) == 2_602_849
    x = torch.zeros(2, 3, 69, 69)
    shapes = []
    for layer in m.features:
        x = layer(x)
        if not isinstance(layer, torch.nn.ZeroPad2d):
            shapes.append(tuple(x.shape[1:]))
    # Table 1 of the study, 'same' padding: conv layers keep the size, max-pools floor-halve it
    assert shapes == [
        (32, 69, 69), (32, 69, 69), (32, 69, 69),
        (64, 69, 69), (64, 69, 69), (64, 34, 34), (64, 34, 34),
        (128, 34, 34), (128, 34, 34), (128, 17, 17), (128, 17, 17),
        (128, 17, 17), (128, 17, 17), (128, 17, 17),
    ]
    assert m.flat_features == 36_992
    assert m.head[1].in_features == 36_992 and m.head[1].out_features == 64
    assert m(torch.zeros(2, 3, 69, 69)).shape == (2,)


def test_freeze_features_leaves_only_the_dense_part_trainable():
    m = DS18()
    m.freeze_features()
    assert count_parameters(m, trainable_only=True) == 36_992 * 64 + 64 + 64 + 1


def test_save_load_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    m = DS18().eval()
    save_model(m, tmp_path / "m", {"task": "Q1", "survey": "sdss"})
    m2, card = load_model(tmp_path / "m", expect_task="Q1")
    x = torch.rand(3, 3, 69, 69)
    assert torch.equal(m(x), m2(x))
    assert card["n_parameters"] == 2_602_849 and len(card["model_id"]) == 16
    with pytest.raises(InputError, match="task 'Q1', not 'Q2'"):
        load_model(tmp_path / "m", expect_task="Q2")
    card["architecture"] = "resnet"
    (tmp_path / "m" / "card.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="architecture 'resnet'"):
        load_model(tmp_path / "m")
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "weights.safetensors").write_bytes(b"<html>not weights</html>")
    (tmp_path / "bad" / "card.json").write_text(json.dumps({"architecture": "ds18", "task": "Q1"}))
    with pytest.raises(InputError, match="cannot be read"):
        load_model(tmp_path / "bad")


def test_active_feature_channels_counts_the_last_conv_layers_firing_channels():
    torch.manual_seed(0)
    m = DS18().train()
    x = torch.rand(70, 3, 69, 69)
    with torch.no_grad():
        h = m.eval().features(x)
    m.train()
    expect = int((h > 0).flatten(2).any(2).any(0).sum())
    assert 64 < expect <= 128  # a fresh Glorot network: most channels fire on noise images
    # counted in eval mode (no dropout), over batches of 64, and the caller's mode is kept
    assert active_feature_channels(m, x) == expect and m.training
    # a network whose last conv layer is shut (all biases far below any input) is dead: 0
    last = [layer for layer in m.features if isinstance(layer, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.bias.fill_(-1e3)
    assert active_feature_channels(m, x) == 0
    d = m.eval()(x)
    assert torch.equal(d, d[:1].expand_as(d))  # the same logit for every image
    assert active_feature_channels(m, x[:0]) is None
    assert active_feature_channels(torch.nn.Linear(3, 1), x) is None


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3])
def test_fast_dropout_keeps_1_minus_p_and_rescales(p):
    """DS18's CPU dropout (8-bit masks for 0.5/0.25, 16-bit otherwise): right rate, i.i.d., scaled."""
    from morphtransfer.models import Dropout

    x = torch.ones(30, 32, 69, 69).contiguous(memory_format=torch.channels_last)  # 4.6M values
    d = Dropout(p).train()
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    # binomial sd sqrt(p(1-p)/n) ~ 2.3e-4: 5 sd
    assert abs(kept.float().mean().item() - (1 - p)) < 1.2e-3
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # no structure along channels (the layout-filled mask must be i.i.d. in every axis)
    per_channel = kept.float().mean(dim=(0, 2, 3))
    assert (per_channel - (1 - p)).abs().max().item() < 0.01
    torch.manual_seed(0)
    assert torch.equal(d(x), y)  # seeded
    assert torch.equal(d.eval()(x), x)  # identity at inference
