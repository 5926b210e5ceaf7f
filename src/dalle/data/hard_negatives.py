"""Hard negative captions for contrastive training, made by swapping one word.

A CLIP learns what tells the captions of a batch apart. When most captions already differ
in colour or position, little pushes it to learn shape; NegCLIP (Yuksekgonul et al. 2023,
"When and why vision-language models behave like bags-of-words") adds, for each caption,
a near-copy that is wrong in one detail. Here the detail is one word replaced by another
of its group (a shape by another shape, a colour by another colour), so every image is
contrasted with a caption that differs from its own in exactly one attribute.

Random choices come from torch's generator, so a resumed run draws the same negatives.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

_WORD = re.compile(r"[a-z]+")


def swap_one_word(
    caption: str,
    groups: Sequence[Sequence[str]],
    forbidden: Sequence[str] = (),
    tries: int = 8,
) -> str | None:
    """``caption`` with one word of a group replaced by another word of the same group,
    or None if it has no such word (or every draw contained a ``forbidden`` phrase, such
    as a colour-shape pair that training must never see)."""
    group_of = {word: group for group in groups for word in group}
    spots = [m for m in _WORD.finditer(caption) if m.group() in group_of]
    if not spots:
        return None
    for _ in range(tries):
        spot = spots[int(torch.randint(len(spots), ()))]
        others = [w for w in group_of[spot.group()] if w != spot.group()]
        if not others:
            return None
        word = others[int(torch.randint(len(others), ()))]
        negative = caption[: spot.start()] + word + caption[spot.end() :]
        if not any(phrase in negative for phrase in forbidden):
            return negative
    return None


def hard_negatives(
    captions: Sequence[str], groups: Sequence[Sequence[str]], forbidden: Sequence[str] = ()
) -> list[str]:
    """One negative per caption; a caption with nothing to swap gets the next caption of
    the batch instead (an ordinary negative), so there are always ``len(captions)``."""
    negatives = []
    for i, caption in enumerate(captions):
        negative = swap_one_word(caption, groups, forbidden)
        negatives.append(negative if negative is not None else captions[(i + 1) % len(captions)])
    return negatives
