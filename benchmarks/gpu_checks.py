"""Correctness on a CUDA GPU of the paths the CPU test suite cannot reach (issue 17): the
fixed-shape sampling step replayed as a CUDA graph against the growing cache, and the
fused causal kernel and FlexAttention against dense masks. Prints one JSON line per check
(relative error ||a - b|| / ||b||) and exits non-zero if any fails.

    python benchmarks/gpu_checks.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch

from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.sampling.sampler import FixedShapeStep, SamplingConfig, sample_image_tokens

# The checks run on the CPU too (no graph capture there): that checks the script only.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def model_for(attention: list[str], backend: str = "sdpa", dtype=torch.float32):
    torch.manual_seed(0)
    config = replace(DALLE_PRESETS["dalle-bench"], attention=attention, attention_backend=backend)
    return DALLETransformer(config).to(DEVICE, dtype).eval()


def check_graph_step(dtype: torch.dtype, tolerance: float) -> dict:
    """Step logits of the captured graph against the growing cache, and whole draws."""
    model = model_for(["row", "column", "conv", "full", "row", "conv"], dtype=dtype)
    c = model.config
    text = torch.randint(2, c.text_vocab_size, (4, c.text_len), device=DEVICE)
    image = torch.randint(0, c.image_vocab_size, (4, c.image_tokens), device=DEVICE)
    with torch.no_grad():
        fixed_cache = model.new_cache(4, text.device, dtype)
        grown_cache = model.new_cache(4, text.device, dtype)
        model(text, image[:, :1], cache=fixed_cache)
        model(text, image[:, :1], cache=grown_cache)
        step = FixedShapeStep(model, fixed_cache, 4)
        worst = 0.0
        for j in range(1, c.image_tokens - 1):
            fixed = step(image[:, j : j + 1], j).clone()
            _, grown = model(None, image[:, j : j + 1], cache=grown_cache, start=j)
            worst = max(worst, relative_error(fixed, grown))
    same = None
    if dtype == torch.float32:
        sampling = SamplingConfig(guidance_scale=2.0)
        draws = [
            sample_image_tokens(
                model,
                text,
                sampling,
                cuda_graph=graph,
                generator=[torch.Generator().manual_seed(i) for i in range(4)],
            )
            for graph in (False, True)
        ]
        same = (draws[0] == draws[1]).float().mean().item()
    ok = worst < tolerance and (same is None or same > 0.99)
    return {"check": f"graph step vs growing cache ({dtype})", "worst_relative_error": worst,
            "same_draws": same, "ok": ok}  # fmt: skip


def check_attention(backend: str, attention: list[str], tolerance: float) -> dict:
    """Teacher-forced logits of ``backend`` against dense masks through SDPA (fp32)."""
    reference = model_for(attention)
    other = model_for(attention, backend)
    other.load_state_dict(reference.state_dict())
    c = reference.config
    text = torch.randint(2, c.text_vocab_size, (4, c.text_len), device=DEVICE)
    image = torch.randint(0, c.image_vocab_size, (4, c.image_tokens), device=DEVICE)
    with torch.no_grad():
        # Dense masks everywhere: the reference runs its "full" layers through the mask
        # too, by taking them from a partial sequence's path (start 0 takes CAUSAL).
        expected = dense_forward(reference, text, image)
        got = other(text, image)[1]
    error = relative_error(got, expected)
    return {"check": f"{backend} {sorted(set(attention))} vs dense masks",
            "relative_error": error, "ok": error < tolerance}  # fmt: skip


def dense_forward(model: DALLETransformer, text: torch.Tensor, image: torch.Tensor):
    """Image logits with every layer's dense boolean mask through SDPA."""
    c = model.config
    h = torch.cat([model.embed_text(model.text_with_position_pads(text)),
                   model.embed_image(image[:, :-1])], dim=1)  # fmt: skip
    for kind, block in zip(c.layer_attention, model.blocks, strict=True):
        h = block(h, getattr(model, f"mask_{kind}"))
    return model.image_head(model.norm(h)[:, c.text_len :])


def main() -> int:
    checks = [
        check_graph_step(torch.float32, 1e-4),
        check_graph_step(torch.bfloat16, 3e-2),
        check_attention("sdpa", ["full"] * 6, 1e-4),
        check_attention("flex", ["row", "column", "conv", "full", "row", "conv"], 1e-3),
    ]
    for check in checks:
        print(json.dumps(check), flush=True)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
