"""Training throughput and sampling time on the issue's reference shape, in the same JSON
form as shared/bench/peer/time_dalle_pytorch.py, so the two can be run side by side.

    .venv/bin/python benchmarks/speed_vs_peer.py [THREADS] [paper|blocked|full] [fp32|bf16]

``paper`` is the paper's sparse schedule as masked attention, ``blocked`` the same schedule
with each image row attending only to the blocks it reaches (attention_backend=blocked),
``full`` dense causal attention in every layer. bf16 is autocast (on a CPU with native
bf16, as this project's CPU training uses it).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from dalle.models.dalle_transformer import DALLEConfig, DALLETransformer
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE
from dalle.sampling.sampler import SamplingConfig, sample_image_tokens


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    attention = sys.argv[2] if len(sys.argv) > 2 else "paper"
    precision = sys.argv[3] if len(sys.argv) > 3 else "fp32"

    def autocast() -> torch.autocast:
        return torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    config = DALLEConfig(
        text_vocab_size=1024, text_len=32, image_vocab_size=512, image_grid=16,
        width=256, layers=6, heads=8, attention=["full"] * 6 if attention == "full" else [],
        attention_backend="blocked" if attention == "blocked" else "sdpa",
    )  # fmt: skip
    model = DALLETransformer(config)
    vae = DiscreteVAE(DVAE_PRESETS["dvae-small"]).eval()  # decodes the samples, as the peer's does
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    batch = 16
    text = torch.randint(2, 1024, (batch, 32))
    image = torch.randint(0, 512, (batch, 256))

    def step() -> None:
        with autocast():
            loss = model.loss(text, image)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    steps = 5
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - start) / steps
    seq = config.sequence_length
    out = {
        "project": "dalle", "attn": attention, "precision": precision,
        "schedule": config.layer_attention,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "batch": batch, "seq": seq, "threads": threads,
        "train_step_s": round(step_s, 3), "train_tokens_per_s": round(batch * seq / step_s),
    }  # fmt: skip
    model.eval()
    with torch.no_grad(), autocast():
        sample_image_tokens(model, text[:4], SamplingConfig(top_k=51))  # warm-up
        start = time.perf_counter()
        tokens = sample_image_tokens(model, text[:4], SamplingConfig(top_k=51))
        vae.decode(tokens.view(4, 16, 16))
        out["generate_4_images_s_cache_True"] = round(time.perf_counter() - start, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
