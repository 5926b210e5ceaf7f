"""Does an FSQ config train stably from every seed? A few hundred updates per seed at the
config's learning rate (linear warm-up, then constant), reporting what a collapse looks
like: the loss stops falling, the gradient vanishes, the latents |z| run away past the
tanh bound, and the held-out batch's tokens shrink to a handful of codes.

    python benchmarks/fsq_stability.py --config configs/fsq-shapes-demo.yaml \
        --seeds 0 1 2 3 4 --steps 200 [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from dalle.data.datasets import open_source
from dalle.losses.reconstruction import reconstruction_loss
from dalle.training.checkpoint import seed_everything
from dalle.training.stages import FSQ


def run(config_path: str, overrides: list[str], seed: int, steps: int) -> dict[str, float]:
    config = FSQ.build_config(config_path, [*overrides, f"loop.seed={seed}"])
    seed_everything(config.loop.seed)
    model = FSQ.build_task(config, torch.device("cpu")).model
    optim = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    stream = iter(open_source(config.data))
    batch = config.data.batch_size
    for step in range(1, steps + 1):
        images = torch.stack([next(stream)["image"] for _ in range(batch)])
        for group in optimizer.param_groups:
            group["lr"] = optim.lr * min(1.0, step / max(1, optim.warmup_steps))
        with torch.autocast("cpu", torch.bfloat16, enabled=config.loop.precision == "bf16"):
            logits, _ = model(images)
        loss = reconstruction_loss(logits, images, config.gradient_weight)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
    with torch.no_grad():
        z = model.encoder(2 * images.float() / 255 - 1).float()  # the last batch's latents
        codes = model.encode(images).unique().numel()
    return {
        "seed": seed,
        "loss": round(loss.item(), 4),
        "grad_norm": round(grad_norm.item(), 4),
        "mean_abs_latent": round(z.abs().mean().item(), 2),
        "codes_in_batch": codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for seed in args.seeds:
        print(json.dumps(run(args.config, args.overrides, seed, args.steps)), flush=True)


if __name__ == "__main__":
    main()
