"""Does a trained dVAE keep Shapes World images judgeable? Reconstruct held-out samples
(never trained on) through argmax tokens and judge each against its own caption.

    python benchmarks/dvae_shapes_judge.py --model RUN_DIR [--count 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from dalle.data.datasets import SHAPES_HOLDOUT_START
from dalle.data.shapes_world import render_scene, sample_scene
from dalle.evaluation.shapes_judge import judge_directory
from dalle.models.dvae import DiscreteVAE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("outputs/dvae_judge"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DiscreteVAE.from_pretrained(args.model, device=device)
    results = {}
    for split in ("train", "zeroshot"):
        scenes = [
            sample_scene(0, SHAPES_HOLDOUT_START + i, args.size, split) for i in range(args.count)
        ]
        originals = torch.stack(
            [torch.from_numpy(render_scene(s)).permute(2, 0, 1) for s in scenes]
        )
        start = time.perf_counter()
        recon = torch.cat(
            [model.decode(model.encode(b.to(device))).cpu() for b in originals.split(250)]
        )
        seconds = time.perf_counter() - start
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, (scene, image) in enumerate(zip(scenes, recon, strict=True)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
            (folder / f"{i:06d}.txt").write_text(scene.caption)
        report = judge_directory(folder)
        mse = ((originals.float() - recon.float()) / 255).pow(2).mean().item()
        results[split] = {"accuracy": report.accuracy, "per_attribute": report.per_attribute(),
                          "images": report.total, "mse": mse, "reconstruct_s": seconds}  # fmt: skip
        print(split, report.summary(), f"mse {mse:.5f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
