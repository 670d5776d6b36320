"""Class balance by sampling (train.BalancedSampler): the default way Q2 and Q3 are balanced."""

import numpy as np
import pytest
import torch

from morphtransfer.errors import InputError
from morphtransfer.train import BalancedSampler, Recipe, class_weights


def _weights(n_pos: int, n_neg: int) -> torch.Tensor:
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    cw = class_weights(y, True)
    return torch.tensor([cw[int(v)] for v in y])


def test_balanced_sampler_draws_each_class_half_the_time():
    w = _weights(30, 970)  # 3% positives, like robust bars
    s = BalancedSampler(w, seed=0)
    draws = []
    for epoch in range(20):
        s.set_epoch(epoch)
        idx = list(s)
        assert len(idx) == len(s) == 1000
        draws += idx
    frac_pos = np.mean(np.array(draws) < 30)
    # binomial: 20,000 draws at p = 0.5 -> sd 0.0035
    assert abs(frac_pos - 0.5) < 0.02
    # every positive is drawn: ~333 times each on average
    counts = np.bincount(np.array(draws), minlength=1000)
    assert counts[:30].min() > 250 and counts[30:].max() < 40


def test_balanced_sampler_is_seeded_per_epoch_and_shared_by_ranks():
    w = _weights(10, 91)
    a, b = BalancedSampler(w, seed=3), BalancedSampler(w, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)  # a resumed epoch draws the same galaxies
    b.set_epoch(3)
    assert list(a) != list(b)
    # DDP: rank shares interleave into the single sequence of the same (seed, epoch)
    r0, r1 = BalancedSampler(w, 3, num_replicas=2, rank=0), BalancedSampler(w, 3, num_replicas=2, rank=1)
    one = BalancedSampler(w, 3, num_replicas=2, rank=0)
    for s in (r0, r1, one):
        s.set_epoch(5)
    assert len(r0) == len(r1) == 51
    g = torch.Generator().manual_seed(3 * 1_000_003 + 5)
    full = torch.multinomial(w.double(), 102, replacement=True, generator=g).tolist()
    assert list(r0) == full[0::2] and list(r1) == full[1::2]


def test_balance_by_is_checked_and_defaults_to_sampling():
    assert Recipe().balance_by == "sampling"
    assert Recipe(balance_by="weights").to_dict()["balance_by"] == "weights"
    with pytest.raises(InputError, match="balance_by"):
        Recipe(balance_by="oversample")
