"""Autoregressive sampling of image tokens with a preallocated key-value cache.

The caption is run once through the transformer; then each image token costs one step
over a single position, attending to the cached keys and values through that layer's
sparse mask row. Classifier-free guidance runs conditional and unconditional (empty
caption) rows in one batch and mixes their logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dalle.models.dalle_transformer import DALLETransformer
from dalle.tokenizers.text import PAD_ID


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # the paper samples at 1
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set with this much probability; 1 keeps all
    guidance_scale: float = 1.0  # classifier-free guidance; 1 means none

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must not be negative, not {self.top_k}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, not {self.guidance_scale}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Sets to -inf every logit outside the top-k and outside the top-p nucleus.

    ``logits``: ``[B, V]``. The most likely token always survives.
    """
    out = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]
        out[out < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p.
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out[drop] = float("-inf")
    return out


# One generator for the batch, or one per row: with one per row, a row's draws depend
# only on its own generator, never on the rows that share its batch (a server batching
# many clients' requests gives each the images it would get alone).
Generators = torch.Generator | Sequence[torch.Generator] | None


def draw_tokens(probs: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """One token per row of ``probs`` ``[B, V]``, ``[B]``.

    With a generator per row, each row inverts its own cumulative distribution at a
    uniform number from its own generator (drawn on the CPU, so a row's draws are the
    same on any device).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    if len(generator) != probs.shape[0]:
        raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
    uniform = torch.cat([torch.rand(1, generator=g) for g in generator]).to(probs.device)
    cumulative = probs.double().cumsum(dim=-1)  # [B, V]
    # (1 - u) lies in (0, 1], so the token found always has a positive probability.
    target = (1 - uniform.double()) * cumulative[:, -1]
    index = torch.searchsorted(cumulative, target[:, None]).squeeze(1)
    return index.clamp_max(probs.shape[-1] - 1)


def guided_logits(
    conditional: torch.Tensor, unconditional: torch.Tensor, scale: float
) -> torch.Tensor:
    """Classifier-free guidance: ``u + scale * (c - u)`` on log-probabilities."""
    c, u = conditional.log_softmax(dim=-1), unconditional.log_softmax(dim=-1)
    return u + scale * (c - u)


@torch.no_grad()
def sample_image_tokens(
    model: DALLETransformer,
    text: torch.Tensor,
    config: SamplingConfig | None = None,
    prime: torch.Tensor | None = None,
    generator: Generators = None,
    on_token: Callable[[int], None] | None = None,
    cuda_graph: bool = False,
    compile_step: bool = False,
    image_embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Samples ``[B, H*W]`` image tokens for captions ``text`` ``[B, L]`` (PAD_ID-padded).

    ``prime`` ``[B, m]`` fixes the first ``m`` image tokens (image-prompted completion: keep
    the top rows of a given image and sample the rest). ``generator``: one for the batch
    or one per row (see :data:`Generators`). ``on_token(j)`` is called after token ``j``
    of every row is drawn (progress; it may raise to abandon the batch). ``cuda_graph``:
    run every step with fixed shapes (over the whole cache), on CUDA captured once as a
    graph and replayed, which removes the per-kernel launch cost that dominates small
    batches; the same draws up to rounding. ``compile_step`` (with ``cuda_graph``): the
    step is compiled (``torch.compile``) before it is captured, which fuses the norms, bias
    adds and residuals into fewer kernels per token; the first call pays the compilation.
    ``image_embed`` ``[B, D]``: the CLIP image embeddings a ``TransformerDecoder`` draws
    from (guidance's unconditional rows get zeros, its dropped embedding, beside padding).
    """
    if compile_step and not cuda_graph:
        raise ValueError("compile_step compiles the fixed-shape step: it needs cuda_graph=True")
    config = config or SamplingConfig()
    batch, total = text.shape[0], model.config.image_tokens
    guided = config.guidance_scale != 1.0
    rows = torch.cat([text, torch.full_like(text, PAD_ID)]) if guided else text
    both = (lambda t: torch.cat([t, t])) if guided else (lambda t: t)
    if image_embed is not None and guided:
        image_embed = torch.cat([image_embed, torch.zeros_like(image_embed)])
    tokens = torch.empty(batch, total, dtype=torch.long, device=text.device)
    primed = 0 if prime is None else prime.shape[1]
    if primed:
        tokens[:, :primed] = prime  # type: ignore[index]
    if primed >= total:
        return tokens
    cache = model.new_cache(rows.shape[0], text.device, next(model.parameters()).dtype)
    # The caption and the primed tokens in one call: logits of image token ``primed``.
    _, logits = model(rows, both(tokens[:, :primed]), cache=cache, image_embed=image_embed)
    step_model = FixedShapeStep(model, cache, rows.shape[0], compile_step) if cuda_graph else None
    for j in range(primed, total):
        step = logits[:, -1].float()  # [rows, V]
        if guided:
            step = guided_logits(step[:batch], step[batch:], config.guidance_scale)
        step = filter_logits(step / config.temperature, config.top_k, config.top_p)
        tokens[:, j] = draw_tokens(step.softmax(dim=-1), generator)
        if on_token is not None:
            on_token(j)
        if j == total - 1:
            break
        if step_model is not None:
            logits = step_model(both(tokens[:, j : j + 1]), j)
        else:
            _, logits = model(None, both(tokens[:, j : j + 1]), cache=cache, start=j)
    return tokens


class FixedShapeStep:
    """The model's sampling step with fixed shapes (a 0-d position tensor, attention over
    the whole cache), captured as one CUDA graph on first use when on CUDA and replayed
    for every later token: one launch per token instead of several per layer.

    ``cache`` must already hold the caption (and any primed tokens); ``rows`` is its batch.
    ``compile``: the step goes through ``torch.compile`` (whole graph, static shapes) first.
    """

    def __init__(self, model: DALLETransformer, cache: list, rows: int, compile: bool = False):
        device = cache[0].keys.device
        self.model, self.cache = model, cache
        self.step = self._step
        if compile:
            self.step = torch.compile(self._step, fullgraph=True, dynamic=False)
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.capture = device.type == "cuda"

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.model(None, token, cache=self.cache, start=position)[1]

    def _run(self) -> torch.Tensor:
        return self.step(self.token, self.position)

    def __call__(self, token: torch.Tensor, index: int) -> torch.Tensor:
        """``token`` ``[rows, 1]``, image token ``index``'s -> logits ``[rows, 1, V]`` of the
        next. Each call writes its own position's keys and values before reading any."""
        self.token.copy_(token)
        self.position.fill_(index)
        if not self.capture:
            return self._run()
        if self.graph is None:
            self._record()
        self.graph.replay()  # type: ignore[union-attr]
        return self.logits  # type: ignore[return-value]

    def _record(self) -> None:
        # Warm-up on a side stream (allocator, library handles), as CUDA graph capture
        # needs; it writes this same position, which the replay then writes again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._run()
