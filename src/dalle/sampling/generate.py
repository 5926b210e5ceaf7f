"""Text to image with a trained model folder (transformer + tokenizer/ + image_tokenizer/)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dalle.data.images import make_grid, to_pil
from dalle.interrupts import whole
from dalle.models.dalle_transformer import DALLETransformer
from dalle.models.image_tokenizer import ImageTokenizer, load_image_tokenizer
from dalle.sampling.rerank import keep_best
from dalle.sampling.sampler import Generators, SamplingConfig, sample_image_tokens
from dalle.tokenizers.text import PAD_ID, TextTokenizer

# A transformer's model folder holds its image tokenizer here (``vae/`` before).
IMAGE_TOKENIZER_DIR = "image_tokenizer"
# The sampling settings a model folder recommends (the name transformers uses), with how
# they were chosen; `dalle generate` uses them unless told otherwise.
GENERATION_CONFIG = "generation_config.json"


def read_sampling_defaults(model_dir: Path) -> SamplingConfig:
    """The folder's recommended sampling settings, or the paper's (temperature 1, no
    guidance) when it recommends none."""
    path = model_dir / GENERATION_CONFIG
    if not path.is_file():
        return SamplingConfig()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(SamplingConfig)}
        return SamplingConfig(**{k: v for k, v in saved.items() if k in known})
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a valid generation config ({error})") from None


def write_sampling_defaults(
    model_dir: Path, sampling: SamplingConfig, chosen: dict[str, Any]
) -> None:
    """Records ``sampling`` as the folder's recommended settings; ``chosen`` says how they
    were chosen (prompts, candidates, pass rates), for whoever wonders why."""
    record = {**asdict(sampling), "chosen": chosen}
    (model_dir / GENERATION_CONFIG).write_text(json.dumps(record, indent=2), encoding="utf-8")


def image_tokenizer_dir(model_dir: Path) -> Path:
    """Where a transformer folder keeps its image tokenizer (older folders: ``vae/``)."""
    folder = model_dir / IMAGE_TOKENIZER_DIR
    return folder if folder.is_dir() or not (model_dir / "vae").is_dir() else model_dir / "vae"


# Scores images against their prompts, higher is better: ``(uint8 [N, 3, H, W], N
# prompts) -> [N]``. A CLIP (:class:`dalle.sampling.rerank.CLIPScorer`) or the
# transformer's own likelihood ratio (:func:`dalle.sampling.rerank.self_scores`).
Scorer = Callable[[torch.Tensor, list[str]], torch.Tensor]


@dataclass
class GenerationOutput:
    """What :meth:`TextToImage.__call__` returns for ``P`` prompts."""

    prompts: list[str]
    # uint8 [P, K, 3, H, W]: each prompt's images, the best first when re-ranked (K is
    # ``keep``), in the order drawn when not.
    images: torch.Tensor
    scores: torch.Tensor | None  # [P, K]: the re-ranker's scores, None without one
    first_images: torch.Tensor  # uint8 [P, 3, H, W]: each prompt's first draw, unranked


@dataclass
class TextToImage:
    model: DALLETransformer
    tokenizer: TextTokenizer
    image_tokenizer: ImageTokenizer
    device: torch.device
    # Used when a call names no sampling settings: the folder's generation_config.json.
    defaults: SamplingConfig = field(default_factory=SamplingConfig)
    # Re-ranks the draws of each prompt when a call keeps fewer than it draws.
    scorer: Scorer | None = None

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        reranker: str | Path | None = None,
    ) -> TextToImage:
        """A `dalle train` model folder; ``reranker`` a `dalle train-clip` folder, or
        ``"self"`` for the transformer's own likelihood ratio."""
        directory = Path(directory)
        device = torch.device(device)
        pipe = cls(
            model=DALLETransformer.from_pretrained(directory, device=device),
            tokenizer=TextTokenizer.load(directory / "tokenizer"),
            image_tokenizer=load_image_tokenizer(image_tokenizer_dir(directory), device),
            device=device,
            defaults=read_sampling_defaults(directory),
        )
        if reranker is not None:
            from dalle.sampling.rerank import CLIPScorer, self_scores

            pipe.scorer = (partial(self_scores, pipe) if str(reranker) == "self"
                           else CLIPScorer.from_pretrained(reranker, device))  # fmt: skip
        return pipe

    @property
    def image_size(self) -> int:
        return self.model.config.image_grid * self.image_tokenizer.downsample

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        keep: int | None = None,
        *,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: Generators = None,
        prime_image: torch.Tensor | None = None,
        prime_rows: int = 0,
        batch_size: int = 16,
        callback: Callable[[int], None] | None = None,
    ) -> GenerationOutput:
        """``num_images_per_prompt`` images for each prompt; with ``keep`` (needs a
        ``scorer``), the best ``keep`` of them by the re-ranker, best first. Sampling settings
        not given take the model's recommended ones; ``callback(n)`` hears of every
        ``n`` images drawn. See :meth:`iter_prompts` for the rest."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("give at least one prompt")
        done = list(self.iter_prompts(
            prompts, num_images_per_prompt, keep, self.sampling(guidance_scale, temperature,
            top_k, top_p), generator, prime_image, prime_rows, batch_size, callback,
        ))  # fmt: skip
        scores = None if done[0][2] is None else torch.stack([d[2] for d in done])
        return GenerationOutput(prompts, torch.stack([d[1] for d in done]), scores,
                                torch.stack([d[3] for d in done]))  # fmt: skip

    def sampling(
        self,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> SamplingConfig:
        """The recommended settings with those given on top."""
        given = {"guidance_scale": guidance_scale, "temperature": temperature, "top_k": top_k,
                 "top_p": top_p}  # fmt: skip
        return replace(self.defaults, **{k: v for k, v in given.items() if v is not None})

    def iter_prompts(
        self, prompts: list[str], num_images_per_prompt: int, keep: int | None = None,
        sampling: SamplingConfig | None = None, generator: Generators = None,
        prime_image: torch.Tensor | None = None, prime_rows: int = 0, batch_size: int = 16,
        callback: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None, torch.Tensor]]:  # fmt: skip
        """Yields ``(prompt, images, scores, first image)`` for each prompt as soon as
        its images are done, so a caller can write them before the next is drawn.

        Draws are made ``batch_size`` at a time, prompts sharing a batch. With ``keep``,
        at most ``keep`` images of a prompt are held between batches (memory stays one
        batch plus the kept ones however many are drawn); ties keep the earlier draw.
        ``generator``: one for every draw, or a list with one per draw, prompt by prompt
        (as diffusers takes them): each draw then depends on its own generator only.
        """
        if not prompts or num_images_per_prompt < 1:
            raise ValueError("give at least one prompt and one image per prompt")
        ranked = keep is not None
        if ranked and self.scorer is None:
            raise ValueError("keep needs a re-ranker: from_pretrained(..., reranker=CLIP_DIR)")
        keep = min(keep, num_images_per_prompt) if ranked else num_images_per_prompt  # type: ignore[type-var]
        order = [i for i in range(len(prompts)) for _ in range(num_images_per_prompt)]
        if isinstance(generator, Sequence) and len(generator) != len(order):
            raise ValueError(f"{len(generator)} generators for {len(order)} draws")
        held: dict[int, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = [prompts[i] for i in chunk]
            mine = (generator[start : start + batch_size] if isinstance(generator, Sequence)
                    else generator)  # fmt: skip
            images = self.generate(texts, sampling, mine, batch_size, prime_image, prime_rows)
            scores = self.scorer(images, texts) if ranked else None  # type: ignore[misc]
            if callback is not None:
                callback(len(chunk))
            for i in dict.fromkeys(chunk):
                mine = torch.tensor([j for j, k in enumerate(chunk) if k == i])
                held[i] = self._merge(held.get(i), images[mine],
                                      None if scores is None else scores[mine], keep)  # fmt: skip
                if start + len(chunk) >= (i + 1) * num_images_per_prompt:
                    kept, kept_scores, first = held.pop(i)
                    yield prompts[i], kept, kept_scores, first

    @staticmethod
    def _merge(
        held: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None,
        images: torch.Tensor,
        scores: torch.Tensor | None,
        keep: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """A prompt's held images with a batch's new ones: the best ``keep`` when scored,
        all of them otherwise; and its first draw."""
        first = images[0] if held is None else held[2]
        if held is not None:
            images = torch.cat([held[0], images])
            if scores is not None:
                scores = torch.cat([held[1], scores])  # type: ignore[list-item]
        if scores is not None:
            images, scores = keep_best(images, scores, keep)
        return images, scores, first

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig | None = None,
        generator: Generators = None,
        batch_size: int = 16,
        prime_image: torch.Tensor | None = None,
        prime_rows: int = 0,
        on_token: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """One uint8 image ``[3, H, W]`` per prompt, ``[len(prompts), 3, H, W]``; different
        prompts share a batch.

        With ``prime_image`` (uint8 ``[3, H, W]``), the top ``prime_rows`` rows of its
        tokens are kept and the rest is sampled: completion of a given image (the paper
        primes 14 of 32 rows). Without ``sampling``, the model's recommended settings.
        ``generator``: one for all, or one per prompt (each image then depends only on its
        own). ``on_token(j)`` hears of each image token drawn in a batch.
        """
        sampling = sampling or self.defaults
        grid = self.model.config.image_grid
        prime = None
        if prime_image is not None and prime_rows > 0:
            if not 0 < prime_rows < grid:
                raise ValueError(f"prime_rows must be between 1 and {grid - 1}")
            codes = self.image_tokenizer.encode(prime_image[None].to(self.device)).flatten(1)
            prime = codes[:, : prime_rows * grid]
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            text = self.tokenizer.encode(chunk).ids.to(self.device)  # [n, L]
            primed = None if prime is None else prime.expand(len(chunk), -1)
            mine = (generator[start : start + batch_size] if isinstance(generator, Sequence)
                    else generator)  # fmt: skip
            # On a GPU each step is replayed as a CUDA graph (7.9x faster at batch 1 on an
            # H100, the same draws; BENCHMARKS.md).
            tokens = sample_image_tokens(self.model, text, sampling, prime=primed,
                                         generator=mine, on_token=on_token,
                                         cuda_graph=self.device.type == "cuda")  # fmt: skip
            tokens = tokens.view(len(chunk), grid, grid)
            images.append(self.image_tokenizer.decode(tokens).cpu())
        return torch.cat(images)

    @torch.no_grad()
    def log_likelihood(
        self, images: torch.Tensor, captions: list[str], unconditional: bool = False
    ) -> torch.Tensor:
        """Natural-log likelihood of each image's tokens given its caption, ``[B]``.

        ``images``: uint8 ``[B, 3, H, W]`` at the size the model was trained on. DALL-E is
        a density model over image tokens: this is ``sum_j log p(token_j | caption,
        tokens before j)``.
        """
        text = self.tokenizer.encode(captions).ids.to(self.device)
        if unconditional:  # the empty caption of caption dropout: padding only
            text = torch.full_like(text, PAD_ID)
        tokens = self.image_tokenizer.encode(images.to(self.device)).flatten(1)  # [B, H*W]
        _, image_logits = self.model(text, tokens)
        return token_log_likelihood(image_logits, tokens)


def token_log_likelihood(image_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``sum_j log p(token_j | ...)`` in nats per row, ``[B]`` on the CPU, from teacher-forced
    logits ``[B, T, V]`` whose row ``j`` predicts ``tokens[:, j]`` (``[B, T]``)."""
    log_probs = image_logits.float().log_softmax(dim=-1)
    return log_probs.gather(-1, tokens[..., None]).squeeze(-1).sum(dim=1).cpu()


def bits_per_dimension(log_likelihood: torch.Tensor, dimensions: int) -> torch.Tensor:
    """Negative log-likelihood in bits, divided by the number of dimensions."""
    return -log_likelihood / (dimensions * math.log(2))


def write_images(
    images: torch.Tensor, prompts: list[str], out_dir: Path, first_index: int = 0
) -> None:
    """``NNNN.png`` beside ``NNNN.txt`` holding its prompt, so any judge can check them;
    Ctrl-C or SIGTERM never leaves an image without its caption."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for offset, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        stem = out_dir / f"{first_index + offset:04d}"
        with whole():
            to_pil(image).save(stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(prompt, encoding="utf-8")


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, columns=min(columns, len(images))).save(path)
