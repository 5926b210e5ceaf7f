"""FlexAttention (block-sparse) against dense masked SDPA, training step time on a GPU,
at the paper's 1,280-token sequence (256 text + 32x32 image tokens) with its sparse layer
schedule. Run when a GPU is lent; record the figures in BENCHMARKS.md.

    python benchmarks/gpu_attention.py [--width 1024] [--layers 24] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dalle.models.dalle_transformer import DALLEConfig, DALLETransformer


def time_step(
    model: DALLETransformer, text: torch.Tensor, image: torch.Tensor, steps: int
) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for i in range(steps + 3):  # three warm-up steps (compilation, allocator)
        if i == 3:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(text, image)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for backend in ("sdpa", "flex"):
        torch.manual_seed(0)
        config = DALLEConfig(width=args.width, layers=args.layers, heads=args.heads,
                             attention_backend=backend)  # fmt: skip
        model = DALLETransformer(config).cuda()
        text = torch.randint(
            2, config.text_vocab_size, (args.batch, config.text_len), device="cuda"
        )
        image = torch.randint(
            0, config.image_vocab_size, (args.batch, config.image_tokens), device="cuda"
        )
        seconds = time_step(model, text, image, args.steps)
        results[backend] = {
            "step_s": seconds,
            "tokens_per_s": args.batch * config.sequence_length / seconds,
        }
        del model
        torch.cuda.empty_cache()
    results["flex_speedup"] = results["sdpa"]["step_s"] / results["flex"]["step_s"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
