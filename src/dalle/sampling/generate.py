"""Text to image with a trained model folder (transformer + tokenizer/ + image_tokenizer/)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from dalle.data.images import make_grid, to_pil
from dalle.models.dalle_transformer import DALLETransformer
from dalle.models.image_tokenizer import ImageTokenizer, load_image_tokenizer
from dalle.sampling.sampler import SamplingConfig, sample_image_tokens
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


@dataclass
class TextToImage:
    model: DALLETransformer
    tokenizer: TextTokenizer
    image_tokenizer: ImageTokenizer
    device: torch.device
    # Used when a call names no sampling settings: the folder's generation_config.json.
    defaults: SamplingConfig = field(default_factory=SamplingConfig)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> TextToImage:
        directory = Path(directory)
        device = torch.device(device)
        return cls(
            model=DALLETransformer.from_pretrained(directory, device=device),
            tokenizer=TextTokenizer.load(directory / "tokenizer"),
            image_tokenizer=load_image_tokenizer(image_tokenizer_dir(directory), device),
            device=device,
            defaults=read_sampling_defaults(directory),
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        num_images: int = 1,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 16,
        prime_image: torch.Tensor | None = None,
        prime_rows: int = 0,
    ) -> torch.Tensor:
        """uint8 images ``[num_images, 3, H, W]`` for one prompt (see :meth:`generate`)."""
        return self.generate(
            [prompt] * num_images, sampling, generator, batch_size, prime_image, prime_rows
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 16,
        prime_image: torch.Tensor | None = None,
        prime_rows: int = 0,
    ) -> torch.Tensor:
        """One uint8 image ``[3, H, W]`` per prompt, ``[len(prompts), 3, H, W]``; different
        prompts share a batch.

        With ``prime_image`` (uint8 ``[3, H, W]``), the top ``prime_rows`` rows of its
        tokens are kept and the rest is sampled: completion of a given image (the paper
        primes 14 of 32 rows). Without ``sampling``, the model's recommended settings.
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
            tokens = sample_image_tokens(
                self.model, text, sampling, prime=primed, generator=generator
            )
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
        log_probs = image_logits.float().log_softmax(dim=-1)
        return log_probs.gather(-1, tokens[..., None]).squeeze(-1).sum(dim=1).cpu()


def bits_per_dimension(log_likelihood: torch.Tensor, dimensions: int) -> torch.Tensor:
    """Negative log-likelihood in bits, divided by the number of dimensions."""
    return -log_likelihood / (dimensions * math.log(2))


def write_images(
    images: torch.Tensor, prompts: list[str], out_dir: Path, first_index: int = 0
) -> None:
    """``NNNN.png`` beside ``NNNN.txt`` holding its prompt, so any judge can check them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for offset, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        stem = out_dir / f"{first_index + offset:04d}"
        to_pil(image).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(prompt, encoding="utf-8")


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, columns=min(columns, len(images))).save(path)
