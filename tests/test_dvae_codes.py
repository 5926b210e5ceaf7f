"""Splitting busy dVAE codes into unused ones (training/dvae_codes.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from dalle.training.dvae_codes import plan_splits, split_code


def test_plan_splits_takes_the_codes_with_most_error_into_the_least_used():
    codes = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    error = torch.tensor([0.1, 0.1, 0.1, 0.5, 0.5, 9.0, 0.2, 0.3])
    unused = torch.tensor([False, False, False, True, False, True, True, True])
    # code 2 has the most error but one position: it cannot be split; code 3 was unused
    # before this batch but has positions in it: it is no target
    assert plan_splits(codes, error, unused, count=2) == [(1, 5), (3, 6)]
    assert [t for _, t in plan_splits(codes, error, unused, count=8)] == [5, 6, 7]


def test_plan_splits_makes_none_when_every_code_is_in_use():
    codes = torch.tensor([0, 0, 1, 1])
    assert plan_splits(codes, torch.ones(4), torch.tensor([False, False]), count=4) == []


def test_a_split_shares_the_source_between_two_codes_and_leaves_the_rest_alone():
    generator = torch.Generator().manual_seed(0)
    vocab, width, dim, n = 6, 5, 3, 40
    weight = torch.randn(vocab, width, generator=generator)
    bias = torch.randn(vocab, generator=generator)
    embedding = torch.randn(dim, vocab, generator=generator)
    features = torch.randn(n, width, generator=generator)
    before = features @ weight.T + bias  # [N, V]
    codes = before.argmax(dim=1)
    source = int(codes.mode().values)
    error = torch.rand(n, generator=generator)
    w0, b0 = weight.clone(), bias.clone()
    target = (source + 1) % vocab
    split_code(weight, bias, embedding, features, codes, error, source, target, spread=0.0)
    after = features @ weight.T + bias
    others = [k for k in range(vocab) if k not in (source, target)]
    assert torch.equal(after[:, others], before[:, others])
    assert torch.equal(embedding[:, target], embedding[:, source])
    mine = codes == source
    centre = features[mine].mean(dim=0)
    worst = features[mine][error[mine].argmax()]
    at = torch.stack([centre, worst]) @ weight.T + bias
    original = torch.stack([centre, worst]) @ w0[source] + b0[source]
    # at the source's mean position the two codes share its mass equally ...
    pair = at[0, [source, target]]
    torch.testing.assert_close(pair[0], pair[1])
    torch.testing.assert_close(pair.logsumexp(0), original[0])
    # ... and the worst position goes to the new code by twice the margin
    torch.testing.assert_close(at[1, target] - at[1, source], torch.tensor(4.0))
    assert math.isclose(float(at[1, target] - original[1]), 2.0 - math.log(2), abs_tol=1e-4)


def test_the_dvae_task_splits_at_each_new_round_into_codes_that_then_decode_alike() -> None:
    from dalle.data.datasets import ShapesWorldStream
    from dalle.models.dvae import DVAE_PRESETS
    from dalle.training.dvae_task import DVAEObjectiveConfig, DVAETask, DVAETrainConfig

    split = DVAEObjectiveConfig(split_every=10, split_count=3)
    config = DVAETrainConfig(preset="dvae-tiny", model=DVAE_PRESETS["dvae-tiny"], objective=split)
    config.data = replace(config.data, image_size=32, batch_size=8)
    config.eval.samples = 4
    torch.manual_seed(0)
    task = DVAETask(config, torch.device("cpu"))
    # never on the first update seen (a start or a resume), then once per new round
    due = [task.split_due(p) for p in (3, 9, 10, 12, 25, 26)]
    assert due == [False, False, True, False, True, False]
    stream = ShapesWorldStream(32, count=16)
    images = torch.stack([s["image"] for _, s in zip(range(16), stream, strict=False)])
    used = task.model.encode(images).unique().numel()
    task.split_codes(images)
    assert task.model.encode(images).unique().numel() > used  # each target took positions
    # each target's embedding is its source's: the reconstruction does not jump
    embed = task.model.decoder.embed.weight[:, :, 0, 0].T  # [V, D]
    twins = (torch.cdist(embed, embed) == 0).sum(dim=1) - 1  # other codes alike, per code
    assert int((twins > 0).sum()) >= 2


def test_a_split_of_a_tight_code_swings_no_logit_far_from_it():
    """A code whose positions lie close together (a background's) is split with a slope
    of at most margin / spread, so positions elsewhere keep their codes."""
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(4, 3, generator=generator), torch.zeros(4)
    embedding = torch.randn(2, 4, generator=generator)
    tight = torch.tensor([1.0, 0.0, 0.0]) + 1e-3 * torch.randn(20, 3, generator=generator)
    far = torch.randn(20, 3, generator=generator)
    features = torch.cat([tight, far])
    codes = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    error = torch.rand(40, generator=generator)
    before = features @ weight.T + bias
    split_code(weight, bias, embedding, features, codes, error, 0, 3, spread=1.0)
    after = features @ weight.T + bias
    # the two codes' logits move by at most margin * distance / spread (+ log 2)
    distance = (features - tight.mean(dim=0)).norm(dim=1)
    moved = (after[:, [0, 3]] - before[:, [0, 0]]).abs().max(dim=1).values
    assert (moved <= 2.0 * distance + math.log(2) + 1e-4).all()
    assert moved.max() < 10
