"""Splitting the discrete VAE's busiest badly-reconstructed codes into its unused ones.

A dVAE trained for minutes settles early on a few dozen of its codes: each stands for a
flat colour or a coarse edge, the decoder learns their average, and the posterior is too
sure for the Gumbel noise to try the hundreds of codes nobody uses (BENCHMARKS.md). Not
in the paper. As in the splitting step of vector quantiser design (Linde, Buzo and Gray
1980) and the random restarts of dead codes in Jukebox (Dhariwal et al. 2020), an unused
code is given half of a busy one's positions: the half-space on the side of its worst
reconstructed position. Its decoder embedding starts as the busy code's, so the
reconstruction does not change at the split; training then pulls the two apart.
"""

from __future__ import annotations

import math

import torch


def plan_splits(
    codes: torch.Tensor, error: torch.Tensor, unused: torch.Tensor, count: int
) -> list[tuple[int, int]]:
    """Which code to split into which unused one: up to ``count`` pairs ``(source, target)``.

    Args:
        codes: each latent position's code (the posterior's argmax), ``[N]``.
        error: each position's reconstruction error, ``[N]``.
        unused: which codes no position has taken for a while, ``[V]`` bool: codes nothing
            would miss. (Absent from one batch is not enough: a code for something rare
            may be missing from any one batch and still be needed.)
        count: the most splits to make.

    Sources are the codes with the largest summed error over their positions, at least
    two positions each (a split needs one on each side); targets are unused codes, in
    order.
    """
    vocab = unused.numel()
    positions = torch.bincount(codes, minlength=vocab)
    summed = torch.zeros(vocab, dtype=torch.float64).index_add_(0, codes, error.double())
    summed[positions < 2] = -1.0
    sources = [int(k) for k in summed.argsort(descending=True)[:count] if summed[k] > 0]
    free = unused & (positions == 0)  # never one of this batch's codes
    targets = [int(j) for j in free.nonzero().flatten()[: len(sources)]]
    return list(zip(sources, targets, strict=False))


@torch.no_grad()
def split_code(
    weight: torch.Tensor,
    bias: torch.Tensor,
    embedding: torch.Tensor,
    features: torch.Tensor,
    codes: torch.Tensor,
    error: torch.Tensor,
    source: int,
    target: int,
    spread: float,
    margin: float = 2.0,
) -> None:
    """Gives ``target`` the half of ``source``'s positions nearest its worst one, in place.

    Args:
        weight: the encoder's last layer, ``[V, C]`` (a view of its 1x1 kernel), and
        bias: its bias ``[V]``: ``logits = features @ weight.T + bias``.
        embedding: the decoder's first layer, ``[D, V]``: column ``k`` is code k's embedding.
        features: what the encoder's last layer sees at each position, ``[N, C]``.
        codes, error: each position's code and reconstruction error, ``[N]``.
        spread: how far features typically lie from one another (e.g. their RMS distance
            from their mean): the split's slope is at most ``margin / spread``.
        margin: the two codes' logits differ by up to ``2 * margin`` at the worst position
            and by 0 at the source's mean position.

    Along ``u`` = worst position - mean position of ``source``'s features, target's logit
    becomes ``source + s(h)`` and source's ``source - s(h)``, ``s`` linear in ``h`` and 0
    at the mean; both lose ``log 2`` so together they keep about the mass ``source`` had.
    ``s(worst) = margin * |u| / max(|u|, spread)``: when a code's positions all lie close
    together, a slope of ``margin / |u|`` would swing every logit of the two codes far
    from them (a background code's split once took over objects' positions that way).
    """
    mine = codes == source
    centre = features[mine].mean(dim=0)  # [C]
    worst = features[mine][error[mine].argmax()]  # [C]
    u = worst - centre
    length = float(u.norm())
    if length <= 0:
        return  # every position of the source looks the same: nothing to split along
    step = margin * u / (length * max(length, spread))  # s(h) = step . (h - centre)
    shift = step.dot(centre)
    weight[target] = weight[source] + step
    bias[target] = bias[source] - shift - math.log(2)
    weight[source] -= step
    bias[source] += shift - math.log(2)
    embedding[:, target] = embedding[:, source]
