"""How much of a Shapes World scene a CLIP image embedding holds: the ceiling on what any
decoder can redraw from it (unCLIP's variations). An MLP probe learns, from the
embeddings of training-split scenes, the scene's content as the judge reads it: the
number of objects and how many of each (colour, shape) pair it holds, order-free (a
variation may move objects). It is tested on held-out scenes of seen pairs; for
zero-shot pairs a pair classifier cannot name a pair it never saw, so there the probe
reads count, colours and shapes separately (each object's colour and shape, objects
ordered along their relation's axis). ``content_probability``: the probe's mean
probability of the true content, what drawing from its belief would get right.

    python benchmarks/clip_content_probe.py --clip DIR [--train 20000] [--test 1000]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle.data.datasets import DataConfig, load_images
from dalle.data.shapes_world import COLORS as PALETTE
from dalle.data.shapes_world import SHAPES
from dalle.evaluation.shapes_judge import detect_objects
from dalle.models.clip import CLIP

COLORS = list(PALETTE)
PAIRS = len(COLORS) * len(SHAPES)
NONE_COLOR, NONE_SHAPE = len(COLORS), len(SHAPES)  # an absent second object


@torch.no_grad()
def embed_scenes(clip: CLIP, source: str, subset: str, count: int):
    """Unit-norm CLIP embeddings ``[N, D]`` and the judge's reading of each scene
    ``[N, 5]``: count - 1, then colour and shape of two objects (absent: NONE_*), in
    order along the relation's axis."""
    images, _ = load_images(DataConfig(source=source, image_size=64, subset=subset), count)
    embeds = torch.cat([clip.encode_image(images[i : i + 512]) for i in range(0, count, 512)])
    rows = []
    for image in images.permute(0, 2, 3, 1).numpy():
        # Along a relation's axis the centres differ by >= 0.30 N and across it by at most
        # 0.15 N, so x + y orders two objects along the axis they were placed on.
        found = sorted(detect_objects(image), key=lambda o: o.center[0] + o.center[1])
        row = [len(found) - 1]
        for k in range(2):
            has = k < len(found)
            row += [COLORS.index(found[k].color) if has else NONE_COLOR,
                    SHAPES.index(found[k].shape) if has else NONE_SHAPE]  # fmt: skip
        rows.append(row)
    return F.normalize(embeds.float(), dim=-1), torch.tensor(rows)


def pair_counts(scenes: torch.Tensor) -> torch.Tensor:
    """``[N, 5]`` readings -> ``[N, PAIRS]`` counts (0-2) of each (colour, shape) pair."""
    counts = torch.zeros(len(scenes), PAIRS, dtype=torch.long)
    for k in range(2):
        color, shape = scenes[:, 1 + 2 * k], scenes[:, 2 + 2 * k]
        present = color < NONE_COLOR
        counts[present, (color * len(SHAPES) + shape)[present]] += 1
    return counts


def fit(x: torch.Tensor, targets: torch.Tensor, classes: list[int], epochs: int = 60) -> nn.Module:
    """An MLP with one softmax head per target column (``classes[i]`` classes)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                        nn.Linear(512, sum(classes)))  # fmt: skip
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(256):
            heads = net(x[batch]).split(classes, dim=-1)
            loss = sum(F.cross_entropy(h, targets[batch, i]) for i, h in enumerate(heads))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return torch.stack([h.argmax(-1) for h in net(x).split(classes, dim=-1)], dim=-1)


@torch.no_grad()
def true_probability(net: nn.Module, x: torch.Tensor, counts: torch.Tensor) -> float:
    """The pair probe's mean probability of each scene's true content: how often a
    decoder that drew content from the probe's belief would draw it right (the probe's
    answer, ``content``, is its most likely content instead)."""
    log_p = net(x).view(len(x), PAIRS, 3).log_softmax(-1)  # [N, PAIRS, 3]
    return log_p.gather(-1, counts[..., None]).sum((1, 2)).exp().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, required=True, help="a `dalle train-clip` folder")
    parser.add_argument("--train", type=int, default=20000, help="training-split scenes")
    parser.add_argument("--test", type=int, default=1000, help="held-out scenes per split")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    clip = CLIP.from_pretrained(args.clip).eval()
    x, scenes = embed_scenes(clip, "shapes", "train", args.train)
    tests = {"seen": embed_scenes(clip, "shapes", "holdout", args.test),
             "zeroshot": embed_scenes(clip, "shapes:zeroshot", "holdout", args.test)}  # fmt: skip
    pair_classes = [3] * PAIRS
    slot_classes = [2, NONE_COLOR + 1, NONE_SHAPE + 1, NONE_COLOR + 1, NONE_SHAPE + 1]
    pairs_net = fit(x, pair_counts(scenes), pair_classes)
    slots_net = fit(x, scenes, slot_classes)
    results = {}
    for name, (tx, ts) in {"train": (x[: args.test], scenes[: args.test]), **tests}.items():
        slots = predict(slots_net, tx, slot_classes) == ts  # [N, 5]
        row = {"count": slots[:, 0].float().mean().item(),
               "colors": slots[:, [1, 3]].all(-1).float().mean().item(),
               "shapes": slots[:, [2, 4]].all(-1).float().mean().item(),
               "ordered_content": slots.all(-1).float().mean().item()}  # fmt: skip
        if name != "zeroshot":  # the pair probe has never seen a zero-shot pair
            right = predict(pairs_net, tx, pair_classes) == pair_counts(ts)
            row["content"] = right.all(-1).float().mean().item()
            row["content_probability"] = true_probability(pairs_net, tx, pair_counts(ts))
        results[name] = row
        print(name, "  ".join(f"{k} {v:.1%}" for k, v in row.items()))
    if args.json:
        args.json.write_text(json.dumps({"clip": str(args.clip), **results}, indent=2))


if __name__ == "__main__":
    main()
