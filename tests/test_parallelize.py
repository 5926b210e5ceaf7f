"""Transforms applied before training leave the model's maths and names unchanged."""

from __future__ import annotations

import torch

from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.training.parallelize import apply_activation_checkpointing


def test_activation_checkpointing_keeps_loss_gradients_and_names() -> None:
    torch.manual_seed(0)
    plain = DALLETransformer(DALLE_PRESETS["dalle-tiny"])
    wrapped = DALLETransformer(DALLE_PRESETS["dalle-tiny"])
    wrapped.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(wrapped, list(wrapped.blocks))
    assert set(wrapped.state_dict()) == set(plain.state_dict())
    text = torch.randint(2, 64, (2, 8))
    image = torch.randint(0, 32, (2, 16))
    losses = []
    for model in (plain, wrapped):
        loss = model.loss(text, image)["loss"]
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
