"""Numeric precision, in one place for every part of a run.

A run names one precision (``loop.precision``): ``fp32``, ``bf16``, ``fp16`` (with the
per-block gradient scaling of :mod:`dalle.training.grad_scaling`), or ``auto`` (bf16 on
CUDA, fp32 elsewhere). From it come the autocast region the loss is computed in, and,
under sharding, the dtype FSDP2 gathers weights in (gradients are always reduced and
master weights kept in fp32). Some computations stay in fp32 whatever the run's
precision: :func:`fp32_island` is how model code says so (the dVAE's logits over
thousands of codes and its one-hot embedding, as in openai/DALL-E).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` made concrete for ``device``; anything not in :data:`PRECISIONS` is a
    ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype the run computes in (and, sharded, gathers weights in)."""
    return DTYPES[resolve_precision(device, precision)]


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager:
    """The region a training step computes its loss in."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def fp32_island(device: torch.device) -> AbstractContextManager:
    """Turns autocast off for a computation that must run in fp32 (meta tensors have no
    autocast to turn off)."""
    if device.type == "meta":
        return nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)
