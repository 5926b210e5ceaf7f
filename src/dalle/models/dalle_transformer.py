"""The DALL-E transformer: a decoder over ``[text tokens ; image tokens]``.

Layout of one training example (``L`` caption tokens, an ``H x W`` image token map):

    input:   [BOS, t_1 .. t_L, i_1 .. i_{HW-1}]    length L + HW
    target:  [t_1 .. t_L, i_1 .. i_HW]

so the input at position p predicts token p + 1, and the start token lets the first
caption token be predicted too. Where a caption is shorter than ``L``, position ``j`` holds
its own learned pad token (``text_vocab_size + j``), as in the paper: a pad's embedding
says where the caption ended. Image tokens add learned row and column embeddings. Text
positions predict only text tokens (pads included) and image positions only image tokens,
through two output heads. The loss weighs the mean text and mean image cross-entropy
1/8 and 7/8.

Written for one device; sharding and activation checkpointing are applied from outside.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from dalle.losses.dalle import text_image_loss
from dalle.models import init
from dalle.models.attention_masks import (
    IMAGE_ATTENTION_KINDS,
    mask_function,
    paper_layer_schedule,
    text_image_mask,
)
from dalle.models.blocked_attention import BlockedLayout, blocked_attention
from dalle.models.pretrained import PretrainedMixin
from dalle.tokenizers.text import PAD_ID


@dataclass
class DALLEConfig:
    """Shape of the transformer; the defaults are the paper's 12-billion-parameter model."""

    text_vocab_size: int = 16384
    text_len: int = 256  # caption tokens (pads included), not counting the start token
    image_vocab_size: int = 8192
    image_grid: int = 32  # image tokens per side
    width: int = 3968
    layers: int = 64
    heads: int = 62
    # Image attention per layer ("row", "column", "conv", "full"); empty: the paper's.
    attention: list[str] = field(default_factory=list)
    conv_kernel: int = 11
    mlp_ratio: int = 4
    dropout: float = 0.0
    text_loss_weight: float = 1 / 8  # the image loss weighs 1 - this
    # "sdpa": masked scaled_dot_product_attention, anywhere. "flex": FlexAttention with
    # block-sparse masks (compiled on CUDA, where fully masked blocks cost nothing).
    # "blocked": each image row attends only to the blocks its mask reaches
    # (dalle.models.blocked_attention; for CPUs). Both are used for whole-sequence passes;
    # cached sampling steps stay on sdpa.
    attention_backend: str = "sdpa"
    # FlexAttention's block (queries and keys per tile of the block mask): only tiles that
    # are wholly masked are skipped, so a smaller block skips more of a sparse layer (a
    # row layer's band is 33 keys wide) at the cost of smaller matrix tiles. Below 128 on
    # CUDA it needs a torch newer than 2.11, whose backward finds no valid tile for it
    # (pytorch/pytorch#176025; BENCHMARKS.md, GPU section).
    flex_block_size: int = 128

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if self.attention and len(self.attention) != self.layers:
            raise ValueError(
                f"attention lists {len(self.attention)} layers, the model has {self.layers}"
            )
        unknown = sorted(set(self.layer_attention) - set(IMAGE_ATTENTION_KINDS))
        if unknown:
            raise ValueError(
                f"unknown image attention kinds {unknown}; use {IMAGE_ATTENTION_KINDS}"
            )
        if self.attention_backend not in ("sdpa", "flex", "blocked"):
            raise ValueError(
                f"attention_backend must be sdpa, flex or blocked, not {self.attention_backend!r}"
            )
        if self.flex_block_size < 16 or self.flex_block_size % 16:
            raise ValueError(
                f"flex_block_size must be a multiple of 16, not {self.flex_block_size}"
            )
        if self.attention_backend == "flex" and self.dropout:
            raise ValueError("the flex attention back-end has no attention dropout; set dropout=0")

    @property
    def layer_attention(self) -> list[str]:
        """Image attention of each layer: ``attention``, or the paper's schedule if empty
        (left empty, it follows ``layers`` when a preset's depth is overridden)."""
        return list(self.attention) or paper_layer_schedule(self.layers)

    @property
    def image_tokens(self) -> int:
        return self.image_grid**2

    @property
    def sequence_length(self) -> int:
        return self.text_len + self.image_tokens


# fmt: off
DALLE_PRESETS: dict[str, DALLEConfig] = {
    # The paper: 64 layers, 62 heads of 64, width 3968, 256 text + 1024 image tokens.
    "dalle-12b": DALLEConfig(),
    # The speed benchmark's reference shape (issue 4): 16x16 tokens of 512.
    "dalle-bench": DALLEConfig(
        text_vocab_size=512, text_len=32, image_vocab_size=512, image_grid=16,
        width=256, layers=6, heads=8,
    ),
    # For tests.
    "dalle-tiny": DALLEConfig(
        text_vocab_size=64, text_len=8, image_vocab_size=32, image_grid=4,
        width=32, layers=4, heads=2, conv_kernel=3,
    ),
}
# fmt: on


def flex_kernel_options(block: int) -> dict | None:
    """Triton tile sizes for a block mask of ``block``-wide tiles: the kernel's tiles must
    divide the mask's, and its defaults (128 queries x 64 keys forward on Hopper) do not
    divide 64. None keeps the defaults for 128."""
    if block >= 128:
        return None
    half = block // 2
    return {"BLOCK_M": block, "BLOCK_N": block, "BLOCK_M1": half, "BLOCK_N1": block,
            "BLOCK_M2": block, "BLOCK_N2": half}  # fmt: skip


@functools.cache
def flex_attention_kernel(device: torch.device):
    """FlexAttention, compiled where it can skip masked blocks (CUDA), eager elsewhere."""
    if device.type == "cuda":
        return torch.compile(flex_attention, dynamic=False)
    return flex_attention


# The mask of a "full" layer over positions 0 .. n: plain causal attention, which the fused
# attention kernels compute without reading a mask.
CAUSAL = "causal"
# What a layer's attention is told to allow: a dense bool mask, FlexAttention's block
# mask, the blocked back-end's layout, or CAUSAL.
AttentionMask = torch.Tensor | BlockMask | BlockedLayout | str


@dataclass
class LayerCache:
    """Preallocated keys and values of one layer: ``[B, heads, S, C / heads]`` each."""

    keys: torch.Tensor
    values: torch.Tensor


class SelfAttention(nn.Module):
    def __init__(self, config: DALLEConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, mask: AttentionMask, cache: LayerCache | None = None,
                start: int | torch.Tensor = 0) -> torch.Tensor:  # fmt: skip
        """``x``: ``[B, n, C]`` at positions ``start .. start + n``.

        ``mask``: bool ``[n, start + n]``, True where attending is allowed (or its block
        form for the flex and blocked back-ends, or :data:`CAUSAL` for a plain causal mask
        from position 0). With a ``cache``, keys and values of earlier positions come from
        it and this call's are written to it. A tensor ``start`` is one fixed-shape
        sampling step: ``n`` is 1 and ``mask`` is ``[1, S]`` over the whole cache.
        """
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # q, k, v: [B, heads, n, C / heads]
        if isinstance(start, torch.Tensor):
            # One fixed-shape step (see DALLETransformer.forward): write this position's
            # keys and values in place and attend over the whole cache; ``mask`` [1, S]
            # hides the positions not yet written (zeros, so masked weights stay finite).
            assert cache is not None and n == 1
            cache.keys.index_copy_(2, start.view(1), k)
            cache.values.index_copy_(2, start.view(1), v)
            k, v = cache.keys, cache.values
        elif cache is not None:
            cache.keys[:, :, start : start + n] = k
            cache.values[:, :, start : start + n] = v
            k, v = cache.keys[:, :, : start + n], cache.values[:, :, : start + n]
        dropout = self.dropout if self.training else 0.0
        if isinstance(mask, BlockMask):
            options = flex_kernel_options(mask.BLOCK_SIZE[0])
            y = flex_attention_kernel(q.device)(q, k, v, block_mask=mask, kernel_options=options)
        elif isinstance(mask, BlockedLayout):
            y = blocked_attention(q, k, v, mask, dropout)
        elif mask is CAUSAL:
            # Queries and keys both start at position 0: the fused kernels skip the masked
            # triangle instead of reading a mask.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm residual block: attention, then an MLP."""

    def __init__(self, config: DALLEConfig) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.width)
        self.attention = SelfAttention(config)
        self.norm_mlp = nn.LayerNorm(config.width)
        hidden = config.mlp_ratio * config.width
        self.mlp = nn.Sequential(
            nn.Linear(config.width, hidden), nn.GELU(), nn.Linear(hidden, config.width)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: AttentionMask, cache: LayerCache | None = None,
                start: int | torch.Tensor = 0) -> torch.Tensor:  # fmt: skip
        x = x + self.dropout(self.attention(self.norm_attention(x), mask, cache, start))
        return x + self.dropout(self.mlp(self.norm_mlp(x)))


class DALLETransformer(PretrainedMixin, nn.Module, config=DALLEConfig):
    def __init__(self, config: DALLEConfig) -> None:
        super().__init__(c := config)  # sets config and init_seed (see PretrainedMixin)
        # Text vocabulary plus one pad token per caption position.
        self.text_embedding = nn.Embedding(c.text_vocab_size + c.text_len, c.width)
        self.text_position = nn.Embedding(c.text_len + 1, c.width)  # start token + caption
        self.start = nn.Parameter(torch.zeros(c.width))
        self.image_embedding = nn.Embedding(c.image_vocab_size, c.width)
        self.row_embedding = nn.Embedding(c.image_grid, c.width)
        self.column_embedding = nn.Embedding(c.image_grid, c.width)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.text_head = nn.Linear(c.width, c.text_vocab_size + c.text_len, bias=False)
        self.image_head = nn.Linear(c.width, c.image_vocab_size, bias=False)
        # One [S, S] mask per distinct attention kind, shared by the layers that use it.
        for kind in sorted(set(c.layer_attention)):
            self.register_buffer(f"mask_{kind}", self._mask(kind), persistent=False)
        self._block_masks: dict[tuple[str, int, str], BlockMask] = {}
        self.init_weights()

    def _mask(self, kind: str) -> torch.Tensor:
        c = self.config
        return text_image_mask(kind, c.text_len + 1, c.image_grid, c.conv_kernel)[:-1, :-1]

    def residual_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def no_weight_decay(self) -> set[str]:
        """The paper's: embeddings do not decay (nor gains, biases, the start token)."""
        return {f"{name}.weight" for name in ("text_embedding", "text_position",
                "image_embedding", "row_embedding", "column_embedding")}  # fmt: skip

    def init_weights(self) -> None:
        """GPT-2 style: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers),
        LayerNorms at identity, biases zero. On the meta device this waits: `parallelize`
        calls it again once the (possibly sharded) weights exist."""
        if self.start.is_meta:
            return
        residual_std = 0.02 / math.sqrt(2 * self.config.layers)
        # (A checkpoint wrapper forwards attribute lookups to the block it wraps.)
        projections = {id(m) for b in self.blocks for m in (b.attention.out, b.mlp[2])}

        def rule(module_name: str, module: nn.Module, name: str, param: torch.Tensor) -> init.Fill:
            if isinstance(module, nn.LayerNorm):
                return init.constant(1.0 if name == "weight" else 0.0)
            if name == "bias":
                return init.constant(0.0)
            # linear and embedding weights, the start token
            return init.normal(residual_std if id(module) in projections else 0.02)

        init.initialise_(self, self.init_seed, rule)
        # Buffers are not saved: after a meta build they are empty memory until now.
        for kind in sorted(set(self.config.layer_attention)):
            getattr(self, f"mask_{kind}").copy_(self._mask(kind))

    def text_with_position_pads(self, text: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` caption ids, PAD_ID where empty -> ids with pad ``j`` at position ``j``."""
        positions = torch.arange(text.shape[1], device=text.device)
        return torch.where(text == PAD_ID, self.config.text_vocab_size + positions, text)

    def with_image_embed(self, h: torch.Tensor, image_embed: torch.Tensor | None) -> torch.Tensor:
        """The embedded start token and caption ``[B, L + 1, C]`` as the blocks get them. A
        subclass conditioned on image embeddings (``TransformerDecoder``) adds them here."""
        if image_embed is not None:
            raise ValueError("the DALL-E transformer is conditioned on captions alone: it "
                             "takes no image embedding")  # fmt: skip
        return h

    def embed_text(
        self, text: torch.Tensor, image_embed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, L]`` ids (pads already per position) -> ``[B, L + 1, C]``, start token first."""
        start = self.start.expand(text.shape[0], 1, self.config.width)
        h = torch.cat([start, self.text_embedding(text)], dim=1)
        h = h + self.text_position(torch.arange(h.shape[1], device=text.device))
        return self.with_image_embed(h, image_embed)

    def embed_image(self, image: torch.Tensor, first: int | torch.Tensor = 0) -> torch.Tensor:
        """``[B, n]`` image tokens at raster indices ``first ..`` -> ``[B, n, C]``."""
        index = first + torch.arange(image.shape[1], device=image.device)
        grid = self.config.image_grid
        return (
            self.image_embedding(image)
            + self.row_embedding(index // grid)
            + self.column_embedding(index % grid)
        )

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> list[LayerCache]:
        """Keys and values for every position of a whole sequence, allocated once (zeros:
        a fixed-shape step reads the unwritten positions too, with zero weight)."""
        c = self.config
        shape = (batch, c.heads, c.sequence_length, c.width // c.heads)
        return [
            LayerCache(torch.zeros(shape, device=device, dtype=dtype),
                       torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(c.layers)
        ]  # fmt: skip

    def run_blocks(
        self, h: torch.Tensor, start: int = 0, cache: list[LayerCache] | None = None
    ) -> torch.Tensor:
        """Hidden states ``[B, n, C]`` at positions ``start .. start + n`` -> normalised output."""
        c, n = self.config, h.shape[1]
        whole = cache is None and start == 0 and n == c.sequence_length
        if whole and c.attention_backend == "blocked":
            return self._run_blocked(h)
        end = start + n
        use_flex = c.attention_backend == "flex" and cache is None and start == 0
        for i, (kind, block) in enumerate(zip(c.layer_attention, self.blocks, strict=True)):
            dense = getattr(self, f"mask_{kind}")[start:end, :end]
            if use_flex:
                mask = self._block_mask(kind, dense)
            elif kind == "full" and start == 0:
                mask = CAUSAL
            else:
                mask = dense
            h = block(h, mask, None if cache is None else cache[i], start)
        return self.norm(h)

    def _run_step(self, h: torch.Tensor, position: torch.Tensor, cache: list[LayerCache]):
        """One position ``h`` ``[B, 1, C]`` at sequence position ``position`` (a 0-d long
        tensor) through the blocks, every shape fixed: the same kernels at every step, so
        the step can be captured once as a CUDA graph and replayed."""
        kinds = self.config.layer_attention
        # One mask row [1, S] per attention kind, shared by the layers of that kind.
        rows = {kind: getattr(self, f"mask_{kind}").index_select(0, position.view(1))
                for kind in set(kinds)}  # fmt: skip
        for kind, block, layer_cache in zip(kinds, self.blocks, cache, strict=True):
            h = block(h, rows[kind], layer_cache, position)
        return self.norm(h)

    def _run_blocked(self, h: torch.Tensor) -> torch.Tensor:
        """The whole input ``[B, S, C]`` through the blocks with blocked attention. A dummy
        last image token completes the grid; it comes after every real position, so none
        of them sees it, and its output is dropped."""
        c = self.config
        h = F.pad(h, (0, 0, 0, 1))  # [B, S + 1, C]: the whole grid
        for kind, block in zip(c.layer_attention, self.blocks, strict=True):
            h = block(h, BlockedLayout(kind, c.text_len + 1, c.image_grid, c.conv_kernel))
        return self.norm(h[:, :-1])

    def _block_mask(self, kind: str, dense: torch.Tensor) -> BlockMask:
        """The FlexAttention block mask of this kind over ``dense``'s ``[S, S]`` positions
        (from 0), built once per kind and S. Its mask function is arithmetic on the
        indices (:func:`mask_function`), not a read of ``dense``."""
        key = (kind, dense.shape[0], str(dense.device))
        if key not in self._block_masks:
            c = self.config
            rule = mask_function(kind, c.text_len + 1, c.image_grid, c.conv_kernel)

            def allowed(b, h, q_index, kv_index):
                return rule(q_index, kv_index)

            self._block_masks[key] = create_block_mask(
                allowed, B=None, H=None, Q_LEN=dense.shape[0], KV_LEN=dense.shape[1],
                device=dense.device, BLOCK_SIZE=c.flex_block_size,
            )  # fmt: skip
        return self._block_masks[key]

    def forward(
        self,
        text: torch.Tensor | None,
        image: torch.Tensor,
        cache: list[LayerCache] | None = None,
        start: int | torch.Tensor = 0,
        image_embed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Logits for the next token.

        Without ``cache`` (training, scoring): ``text`` caption ids ``[B, L]``, PAD_ID
        after the caption, and ``image`` tokens ``[B, n]`` in raster order, ``n <= H*W``.
        Returns ``text_logits`` ``[B, L, V_text + L]`` (predicting the caption and its
        pads) and ``image_logits`` ``[B, n, V_image]``, whose row ``j`` predicts image
        token ``j`` from the caption and the tokens before it (row 0 comes from the last
        caption position; the last token given is only a target).

        With ``cache`` (sampling, from :meth:`new_cache`): a call with ``text`` begins
        the sequence, the caption going into the cache first (``start`` is then 0); a call
        without continues it, the first ``start`` image tokens being in the cache
        already. ``image`` ``[B, n]``, ``n >= 0``, holds the next known tokens, from
        raster index ``start`` (one per step while sampling, a primed prefix at once); they
        are added to the cache. Returns no text logits and ``[B, 1, V_image]``: the logits
        of image token ``start + n``. A 0-d long tensor ``start`` (``n`` must be 1) runs
        the same step with fixed shapes, attending over the whole cache through a mask
        row (for CUDA graphs; :func:`dalle.sampling.sampler.sample_image_tokens`).

        ``image_embed`` ``[B, D]`` goes with the caption, for a model conditioned on image
        embeddings (:class:`dalle.models.transformer_decoder.TransformerDecoder`).
        """
        if cache is None:
            return self._teacher_forced(text, image, image_embed)  # type: ignore[arg-type]
        if isinstance(start, torch.Tensor):
            if text is not None or image.shape[1] != 1:
                raise ValueError("a tensor start is one step: one image token, no caption")
            h = self._run_step(self.embed_image(image, first=start),
                               self.config.text_len + 1 + start, cache)  # fmt: skip
            return None, self.image_head(h)
        c, n = self.config, image.shape[1]
        if start + n >= c.image_tokens:
            raise ValueError(f"image tokens {start}..{start + n - 1} leave nothing to predict "
                             f"in a grid of {c.image_tokens}")  # fmt: skip
        if text is not None and start != 0:
            raise ValueError("a caption begins the sequence: give it with start 0 only")
        parts = [self.embed_image(image, first=start)] if n else []
        if text is not None:
            parts.insert(0, self.embed_text(self.text_with_position_pads(text), image_embed))
        elif image_embed is not None:
            raise ValueError("an image embedding goes with the caption, at start 0")
        # Sequence positions: start token 0, caption 1..L, image token i at L + 1 + i.
        position = 0 if text is not None else c.text_len + 1 + start
        h = self.run_blocks(torch.cat(parts, dim=1), position, cache)
        return None, self.image_head(h[:, -1:])

    def _teacher_forced(
        self, text: torch.Tensor, image: torch.Tensor, image_embed: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        text = self.text_with_position_pads(text)
        # [B, L + n, C]: the last image token is only a target.
        h = self.run_blocks(
            torch.cat([self.embed_text(text, image_embed), self.embed_image(image[:, :-1])], dim=1)
        )
        return self.text_head(h[:, : c.text_len]), self.image_head(h[:, c.text_len :])

    def loss(
        self, text: torch.Tensor, image: torch.Tensor, image_embed: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Weighted cross-entropy; ``image`` must hold the whole ``[B, H*W]`` token map."""
        text_logits, image_logits = self(text, image, image_embed=image_embed)
        text_targets = self.text_with_position_pads(text)
        return text_image_loss(text_logits, text_targets, image_logits, image,
                               self.config.text_loss_weight)  # fmt: skip

    def parameter_counts(self) -> dict[str, int]:
        blocks = sum(p.numel() for p in self.blocks.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"blocks": blocks, "embeddings_and_heads": total - blocks, "total": total}
