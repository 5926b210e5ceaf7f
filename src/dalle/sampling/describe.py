"""Reading a caption from an image, by search over the words of known captions.

A scorer says how well a caption fits an image: a CLIP's cosine of their embeddings, or
a density model's likelihood of the image given the caption (``UnCLIP.describe`` has
both). The caption it scores highest is its reading of the image. The search starts
from the best of a set of known captions (a training set's) and swaps one word at a time
for another that may stand in its place (``Slots``), keeping a swap whenever it raises
the score, until a pass over the words changes nothing. The start holds what the known
captions share with the image; the swaps reach combinations no known caption states (an
orange star when only yellow stars and orange squares were seen). unCLIP's variations
can give the decoder this caption beside the embedding (``UnCLIP.variations(...,
describe=...)``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Scores captions: ``[N]`` from ``N`` captions, higher is a better fit.
Scorer = Callable[[list[str]], torch.Tensor]


# How many words either side name a slot.
WINDOW = 3


def _neighbours(parts: Sequence[str], position: int) -> tuple[str, ...]:
    """The ``WINDOW`` words either side of word ``position`` of a split caption, ``""``
    past either end."""
    padded = [""] * WINDOW + list(parts) + [""] * WINDOW
    at = position + WINDOW
    return (*padded[at - WINDOW : at], *padded[at + 1 : at + 1 + WINDOW])


@dataclass
class Slots:
    """Which words may stand in for which, learnt from known captions (split at spaces).

    Words that fill the same place in two captions alike in every other word are of one
    kind ("a red circle", "a blue circle": red and blue), and kinds are closed under this.
    A word's slot is named by the kinds of the ``WINDOW`` words either side of it, and a
    word may be swapped for any word that fills the same slot in some known caption.
    Naming slots by kinds, not words, lets a swap make neighbours no known caption has ("a
    orange star" from "a orange square" and "a yellow star"); two words either side keep
    the grammar ("left:" and "of" both sit between a place and "a", in "top left: a" and
    "the left of a", but after different words before that). Free swaps among all words
    would give word salad, which a CLIP, reading words more than their order, can score
    highly."""

    kind: dict[str, str]  # word -> its kind: the first word of that kind, sorted
    fillers: dict[tuple[str, ...], list[str]]  # the kinds either side -> words

    @classmethod
    def learn(cls, captions: Sequence[str]) -> Slots:
        split = [caption.split() for caption in dict.fromkeys(captions)]
        exact: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for parts in split:
            for i, word in enumerate(parts):
                exact[(*parts[:i], "", *parts[i + 1 :])].add(word)
        parent = {word: word for parts in split for word in parts}

        def root(word: str) -> str:
            while parent[word] != word:
                word = parent[word]
            return word

        for words in exact.values():  # join each slot's words into one kind
            first, *rest = sorted(words)
            for word in rest:
                a, b = sorted((root(first), root(word)))
                parent[b] = a
        kind = {word: root(word) for word in sorted(parent)}
        kind[""] = ""
        fillers: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for parts in split:
            for i, word in enumerate(parts):
                fillers[tuple(kind[w] for w in _neighbours(parts, i))].add(word)
        return cls(kind, {key: sorted(words) for key, words in sorted(fillers.items())})

    def template(self, caption: str) -> tuple[str, ...]:
        """The kinds of ``caption``'s words in order (a word no known caption uses stands
        for itself): what no swap changes, so swaps search one template's captions."""
        return tuple(self.kind.get(word, word) for word in caption.split())

    def words(self, caption: str, position: int) -> list[str]:
        """The words that may stand at word ``position`` of ``caption`` (none for a word
        beside one the known captions never use)."""
        around = _neighbours(caption.split(), position)
        if any(word not in self.kind for word in around):
            return []
        return self.fillers.get(tuple(self.kind[word] for word in around), [])


def swaps(caption: str, position: int, words: Sequence[str]) -> list[str]:
    """``caption`` with the word at ``position`` replaced by each other word of ``words``."""
    parts = caption.split()
    return [" ".join([*parts[:position], word, *parts[position + 1 :]])
            for word in words if word != parts[position]]  # fmt: skip


def improve_caption(
    score: Scorer,
    caption: str,
    current: float,
    slots: Slots,
    passes: int = 3,
) -> tuple[str, float]:
    """``caption`` (scored ``current``) improved one word at a time: at each position,
    the best caption with that word swapped for another that fills its slot (``slots``)
    replaces it when it scores higher. Stops after ``passes`` passes over the positions,
    or sooner when a pass changes nothing. No caption it returns scores lower than
    ``caption``."""
    for _ in range(passes):
        changed = False
        for position in range(len(caption.split())):
            trials = swaps(caption, position, slots.words(caption, position))
            if not trials:
                continue
            scores = score(trials)
            best = int(scores.argmax())
            if float(scores[best]) > current:
                caption, current, changed = trials[best], float(scores[best]), True
        if not changed:
            break
    return caption, current


def best_per_template(
    captions: Sequence[str], scores: torch.Tensor, slots: Slots, count: int
) -> list[int]:
    """Indices of the best-scoring caption of each of the ``count`` templates
    (``Slots.template``) whose best scores highest, best first. Swaps never leave a
    template, so a search from one start cannot change the caption's structure (how many
    objects, whether it names a place); starts from several templates can."""
    best: dict[tuple[str, ...], int] = {}
    for index in scores.argsort(descending=True, stable=True).tolist():
        best.setdefault(slots.template(captions[index]), index)
    return list(best.values())[:count]
