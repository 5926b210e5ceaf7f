"""DALL-E 2 (unCLIP) with trained folders: prompt -> prior -> CLIP image embedding ->
decoder -> image; and the paper's image manipulations (section 3): variations,
interpolation, text diffs.

A prior folder (`dalle train-prior`) and a decoder folder (`dalle train-decoder`) each
keep the CLIP they were trained on in ``clip/``; they must be the same CLIP. An optional
upsampler folder (`dalle train-upsampler`) enlarges every image the decoder draws; the
CLIP ranks the decoder's images, before upsampling, at the size it was trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dalle.models.clip import CLIP
from dalle.models.decoder import ImageDecoder
from dalle.models.image_tokenizer import (
    ImageTokenizer,
    load_image_tokenizer,
    load_latent_tokenizer,
)
from dalle.models.pretrained import model_type
from dalle.models.prior import DiffusionPrior
from dalle.models.token_decoder import TokenDecoder
from dalle.models.transformer_decoder import TransformerDecoder
from dalle.models.upsampler import Upsampler
from dalle.precision import autocast_context
from dalle.sampling.describe import Slots, best_per_template, improve_caption
from dalle.sampling.diffusion import (
    sample_image_embeddings,
    sample_images,
    to_model_range,
    upsample_images,
)
from dalle.sampling.generate import IMAGE_TOKENIZER_DIR, token_log_likelihood
from dalle.sampling.masked import sample_tokens
from dalle.sampling.rerank import keep_best, standardise
from dalle.sampling.sampler import Generators, SamplingConfig, sample_image_tokens
from dalle.tokenizers.text import PAD_ID, TextTokenizer
from dalle.training.prior_task import CLIP_DIR

# The decoders a `dalle train-decoder` folder may hold, by the model type it records.
Decoder = ImageDecoder | TokenDecoder | TransformerDecoder
DECODERS: dict[str, type[Decoder]] = {
    cls.__name__: cls for cls in (ImageDecoder, TokenDecoder, TransformerDecoder)
}
# Decoders that draw an image tokenizer's tokens (of any kind), not pixels or codes.
TOKEN_DECODERS = (TokenDecoder, TransformerDecoder)


@dataclass
class KnownCaptions:
    """Captions to read an image's caption from (``UnCLIP.describe``), with what the
    search needs of them, worked out once (``UnCLIP.known_captions``)."""

    captions: list[str]  # without repeats
    embeds: torch.Tensor  # [N, D] their unit-norm CLIP text embeddings
    slots: Slots  # which of their words may stand in for which


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation of unit vectors ``[..., D]``: ``a`` at 0, ``b`` at 1."""
    cosine = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    angle = torch.acos(cosine)
    out = (torch.sin((1 - weight) * angle) * a + torch.sin(weight * angle) * b) / torch.sin(angle)
    return F.normalize(out, dim=-1)


def _weights_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@dataclass
class UnCLIPOutput:
    prompts: list[str]
    images: torch.Tensor  # uint8 [P, K, 3, S, S], best first when re-ranked
    scores: torch.Tensor  # [P, K]: the CLIP's cosine of each image with its prompt


@dataclass
class UnCLIP:
    prior: DiffusionPrior | None  # None: a decoder alone (variations, interpolation)
    decoder: Decoder
    clip: CLIP
    tokenizer: TextTokenizer
    device: torch.device
    # "bf16": the diffusion models under bf16 autocast (twice the speed on a CPU with
    # native bf16; about the same images); "fp32" by default.
    precision: str = "fp32"
    upsampler: Upsampler | None = None  # None: images at the decoder's size
    upsampler_steps: int = 25  # DDIM steps of the upsampler
    # A latent or token decoder's (its folder's image_tokenizer/): turns the codes or the
    # tokens it draws into pixels.
    image_tokenizer: ImageTokenizer | None = None
    # A token or transformer decoder's: the temperature of its token draws (1: the model's
    # own distribution; lower is more conservative, as the DALL-E sampler's).
    decoder_temperature: float = 1.0

    @classmethod
    def from_pretrained(
        cls,
        decoder: str | Path,
        prior: str | Path | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        upsampler: str | Path | None = None,
    ) -> UnCLIP:
        decoder, device = Path(decoder), torch.device(device)
        clip_dir = decoder / CLIP_DIR
        if prior is not None and _weights_hash(Path(prior) / CLIP_DIR) != _weights_hash(clip_dir):
            raise ValueError(f"{prior} and {decoder} were trained on different CLIPs")
        loaded = None if prior is None else DiffusionPrior.from_pretrained(prior, device=device)
        kind = DECODERS.get(model_type(decoder, "a `dalle train-decoder`"))
        if kind is None:
            raise ValueError(f"{decoder} holds no DALL-E 2 decoder ({', '.join(DECODERS)})")
        codes = decoder / IMAGE_TOKENIZER_DIR
        # A token decoder's tokenizer may be of any kind; a latent decoder's is FSQ.
        tokens = issubclass(kind, TOKEN_DECODERS)
        load = load_image_tokenizer if tokens else load_latent_tokenizer
        pipe = cls(
            prior=None if loaded is None else loaded.eval(),
            decoder=kind.from_pretrained(decoder, device=device).eval(),
            clip=CLIP.from_pretrained(clip_dir, device=device).eval(),
            tokenizer=TextTokenizer.load(clip_dir / "tokenizer"),
            device=device,
            precision=precision,
            image_tokenizer=load(codes, device) if codes.is_dir() or tokens else None,
        )  # fmt: skip
        if upsampler is not None:
            pipe.upsampler = Upsampler.from_pretrained(upsampler, device=device).eval()
            low = pipe.upsampler.config.low_size
            if low != pipe.image_size:
                raise ValueError(f"{upsampler} enlarges {low}-pixel images; {decoder} draws "
                                 f"{pipe.image_size}-pixel ones")  # fmt: skip
        return pipe

    def autocast(self):
        return autocast_context(self.device, self.precision)

    @property
    def image_size(self) -> int:
        """The decoder's (and the CLIP's) image size: what inputs are read at."""
        scale = 1 if self.image_tokenizer is None else self.image_tokenizer.downsample
        return self.decoder.config.image_size * scale

    @property
    def output_size(self) -> int:
        """The size of the images the pipeline returns (the upsampler's, if any)."""
        scale = 1 if self.upsampler is None else self.upsampler.config.scale
        return self.image_size * scale

    def draw(self, text: torch.Tensor, embed: torch.Tensor, steps: int, guidance: float,
             generator: Generators, **options: Any) -> torch.Tensor:  # fmt: skip
        """uint8 images decoded from CLIP image embeddings, before upsampling: by
        ``sample_images`` (with its ``options``), for a token decoder by ``sample_tokens``
        and for a transformer decoder by ``sample_image_tokens`` (one step per token:
        ``steps`` does not apply). Token draws are always stochastic: of ``options`` only
        ``on_step`` applies to them."""
        with self.autocast():
            on_step = options.get("on_step")
            if isinstance(self.decoder, TransformerDecoder):
                sampling = SamplingConfig(self.decoder_temperature, guidance_scale=guidance)
                tokens = sample_image_tokens(self.decoder, text, sampling, generator=generator,
                                             on_token=on_step, image_embed=embed)  # fmt: skip
                grid = self.decoder.config.image_size
                return self.image_tokenizer.decode(tokens.view(len(tokens), grid, grid)).cpu()
            if isinstance(self.decoder, TokenDecoder):
                tokens = sample_tokens(self.decoder, text, embed, steps, guidance, generator,
                                       temperature=self.decoder_temperature,
                                       on_step=on_step)  # fmt: skip
                return self.image_tokenizer.decode(tokens).cpu()
            return sample_images(self.decoder, text, embed, steps, guidance, generator,
                                 image_tokenizer=self.image_tokenizer, **options).cpu()  # fmt: skip

    @torch.no_grad()
    def upsample(self, images: torch.Tensor, generator: Generators = None,
                 on_step: Callable[[int], None] | None = None) -> torch.Tensor:  # fmt: skip
        """uint8 images ``[B, 3, S, S]`` enlarged by the upsampler (unchanged without one);
        ``on_step(i)`` after each of its DDIM steps."""
        if self.upsampler is None or not len(images):
            return images
        with self.autocast():
            low = to_model_range(images.to(self.device))
            return upsample_images(self.upsampler, low, self.upsampler_steps, generator,
                                   on_step=on_step).cpu()  # fmt: skip

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption ids ``[B, L]`` and their unit-norm CLIP text embeddings ``[B, D]``."""
        text = self.tokenizer.encode(prompts).ids.to(self.device)
        return text, self.clip.encode_text(text).float()

    @torch.no_grad()
    def clip_fit(self, embed: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The CLIP's cosine of each caption with a unit-norm image embedding ``[D]``, ``[N]``."""
        return (self.encode_text(captions)[1] @ embed).cpu()

    @torch.no_grad()
    def caption_log_likelihood(self, tokens: torch.Tensor, embed: torch.Tensor,
                               captions: list[str]) -> torch.Tensor:  # fmt: skip
        """A transformer decoder's ``log p(tokens | caption, embed)`` in nats for each
        caption, ``[N]``: how well each explains an image's tokens ``[T]`` given its CLIP
        image embedding ``[D]``."""
        text = self.tokenizer.encode(captions).ids.to(self.device)
        rows = len(captions)
        return self.image_log_likelihood(text, tokens.expand(rows, -1), embed.expand(rows, -1))

    @torch.no_grad()
    def image_log_likelihood(self, text: torch.Tensor, tokens: torch.Tensor,
                             embeds: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """A transformer decoder's ``log p(tokens | text, embed)`` in nats, row by row:
        caption ids ``[N, L]``, image tokens ``[N, T]``, CLIP image embeddings ``[N, D]``;
        ``[N]`` on the CPU."""
        tokens = tokens.to(self.device)
        with self.autocast():
            _, logits = self.decoder(text, tokens, image_embed=embeds)
        return token_log_likelihood(logits, tokens)

    def reader(self, choice: str = "auto") -> str:
        """Who reads captions (``describe``): "decoder" (its likelihood; a transformer
        decoder only), "clip", or "auto": the decoder where it can, else the CLIP."""
        return self._choose("reader", choice, ("decoder", "clip"))

    def ranking(self, choice: str = "auto", caption: bool = True) -> str:
        """How variations are ranked (``variation_scores``): "clip+likelihood" (a
        transformer decoder only), "clip", or "auto": the first where it can and the
        variations have a ``caption``, else the CLIP alone. Without a caption the
        likelihood says how typical a draw is of any image, not of the source's content,
        and ranking by it kept no more (BENCHMARKS.md)."""
        if choice == "auto" and not caption:
            return "clip"
        return self._choose("rank", choice, ("clip+likelihood", "clip"))

    def _choose(self, what: str, choice: str, options: tuple[str, str]) -> str:
        """``options[0]`` needs the decoder's likelihood, ``options[1]`` does not."""
        density = isinstance(self.decoder, TransformerDecoder)
        if choice == "auto":
            return options[0] if density else options[1]
        if choice not in options:
            raise ValueError(f"{what} must be auto, {' or '.join(options)}, not {choice!r}")
        if choice == options[0] and not density:
            raise ValueError(f"only a transformer decoder has a likelihood ({what} {choice})")
        return choice

    @torch.no_grad()
    def known_captions(self, captions: Sequence[str]) -> KnownCaptions:
        """``captions`` (a training set's, say) made ready to read images' captions from
        (``describe``), once for many images."""
        captions = list(dict.fromkeys(captions))
        if not captions:
            raise ValueError("reading a caption needs at least one known caption to start from")
        embeds = torch.cat([self.encode_text(captions[i : i + 1024])[1]
                            for i in range(0, len(captions), 1024)])  # fmt: skip
        return KnownCaptions(captions, embeds, Slots.learn(captions))

    @torch.no_grad()
    def describe(
        self,
        images: torch.Tensor,
        known: Sequence[str] | KnownCaptions,
        reader: str = "auto",
        shortlist: int = 64,
        passes: int = 3,
        templates: int = 4,
    ) -> list[str]:
        """A caption for each uint8 image ``[B, 3, S, S]``: the ``known`` caption (a
        training set's, say; ``known_captions`` prepares them once for many calls) that
        fits it best, then improved word by word, each word swapped for those that fill
        its slot in the known captions (``sampling.describe``).
        Fit is the CLIP's cosine, or a transformer decoder's likelihood of the image's
        tokens given the caption and the image's embedding (``reader``; "auto": the
        decoder's where it has one). The decoder starts from the ``shortlist`` known
        captions the CLIP ranks first. The search runs from the best start of each of the
        ``templates`` best templates (the word kinds in order, ``Slots.template``: swaps
        keep them) and keeps the best caption found; one template cannot turn "a orange
        star below a orange star" into "a orange star". On Shapes World the decoder reads
        the content far better than the CLIP, which barely binds colours to shapes
        (BENCHMARKS.md)."""
        reader = self.reader(reader)
        if not isinstance(known, KnownCaptions):
            known = self.known_captions(known)
        images = images.to(self.device)
        embeds = self.encode_image(images)  # [B, D]
        if reader == "decoder":
            tokens = self.image_tokenizer.encode(images).flatten(1)  # [B, T]
        captions = []
        for row, embed in enumerate(embeds):
            ranked = known.embeds @ embed  # [N]: the CLIP's fit of each known caption
            if reader == "clip":
                score = partial(self.clip_fit, embed)
                start = [known.captions[int(ranked.argmax())]]
            else:
                score = partial(self.caption_log_likelihood, tokens[row], embed)
                start = [known.captions[i] for i in ranked.argsort(descending=True)[:shortlist]]
            fits = score(start)
            found = [improve_caption(score, start[i], float(fits[i]), known.slots, passes)
                     for i in best_per_template(start, fits, known.slots, templates)]  # fmt: skip
            captions.append(max(found, key=lambda pair: pair[1])[0])
        return captions

    def no_caption(self, rows: int) -> torch.Tensor:
        """``rows`` captions of padding only: the decoder's dropped caption."""
        return torch.full((rows, self.tokenizer.max_length), PAD_ID, device=self.device)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embeddings ``[B, D]`` of uint8 images ``[B, 3, S, S]``, at
        any size: resized (bilinear) to the CLIP's first where it differs."""
        images, size = images.to(self.device), self.clip.config.image_size
        if images.shape[-1] != size:
            resized = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                                    align_corners=False, antialias=True)  # fmt: skip
            images = resized.round().clamp(0, 255).to(torch.uint8)
        return self.clip.encode_image(images).float()

    @torch.no_grad()
    def __call__(
        self, prompt: str | list[str], num_images_per_prompt: int = 1, keep: int | None = None, *,
        prior_guidance_scale: float = 1.0, decoder_guidance_scale: float = 3.0,
        prior_num_inference_steps: int = 64, decoder_num_inference_steps: int = 50,
        generator: Generators = None, batch_size: int = 16,
        on_step: Callable[[int], None] | None = None,
    ) -> UnCLIPOutput:  # fmt: skip
        """``num_images_per_prompt`` images per prompt; with ``keep``, the best ``keep`` by
        the CLIP's similarity with the prompt, best first. ``generator``: one, or a list
        with one per image, prompt by prompt (each image then depends on its own only).
        ``on_step(i)`` hears of every prior and decoder step of a batch."""
        if self.prior is None:
            raise ValueError("text to image needs a prior: from_pretrained(decoder, prior=...)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        rows = [p for p in prompts for _ in range(num_images_per_prompt)]
        images, scores = [], []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            mine = (generator[start : start + batch_size] if isinstance(generator, Sequence)
                    else generator)  # fmt: skip
            text, text_embed = self.encode_text(chunk)
            embed = sample_image_embeddings(self.prior, text, text_embed,
                                            prior_num_inference_steps, prior_guidance_scale,
                                            generator=mine, on_step=on_step)  # fmt: skip
            drawn = self.draw(text, embed, decoder_num_inference_steps, decoder_guidance_scale,
                              mine, on_step=on_step)  # fmt: skip
            images.append(drawn)
            scores.append((self.encode_image(drawn) * text_embed).sum(-1).cpu())
        per_prompt = torch.cat(images).view(
            len(prompts), num_images_per_prompt, *images[0].shape[1:]
        )
        score = torch.cat(scores).view(len(prompts), num_images_per_prompt)
        if keep is not None:
            best = [keep_best(i, s, keep) for i, s in zip(per_prompt, score, strict=True)]
            per_prompt = torch.stack([b[0] for b in best])
            score = torch.stack([b[1] for b in best])
        if self.upsampler is not None:  # only the images kept: ranked at the CLIP's size
            p, k = per_prompt.shape[:2]
            mine = generator
            if isinstance(generator, Sequence):  # a prompt's own generators, one per image
                mine = [generator[i * num_images_per_prompt + j] for i in range(p)
                        for j in range(k)]  # fmt: skip
            larger = self.upsample(per_prompt.flatten(0, 1), mine, on_step)
            per_prompt = larger.view(p, k, *larger.shape[1:])
        return UnCLIPOutput(prompts, per_prompt, score)

    @torch.no_grad()
    def variations(
        self,
        image: torch.Tensor,
        num_images: int = 8,
        caption: str = "",
        decoder_guidance_scale: float = 3.0,
        steps: int = 50,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        candidates: int | None = None,
        batch_size: int = 64,
        describe: Sequence[str] | KnownCaptions | None = None,
        rank: str = "auto",
    ) -> torch.Tensor:
        """``num_images`` uint8 images that keep what the CLIP sees in ``image`` (uint8
        ``[3, S, S]``): its embedding decoded with stochastic sampling (``eta`` > 0), with
        ``caption`` too if given. ``describe`` (known captions, a training set's) and no
        ``caption``: the caption read from the image (``describe``) is given to the decoder
        as well, so the variations still come from the image alone. With
        ``candidates``, that many are drawn and the ``num_images`` that
        ``variation_scores`` ranks first (by ``rank``; "auto": the CLIP and a transformer
        decoder's likelihood where there is a caption, else the CLIP) are kept, best
        first."""
        total = max(candidates or num_images, num_images)
        embed = self.encode_image(image[None])  # [1, D]
        if describe is not None and not caption:
            caption = self.describe(image[None], describe)[0]
        rank = self.ranking(rank, caption=bool(caption))
        text = self.encode_text([caption])[0] if caption else self.no_caption(1)  # [1, L]
        drawn = []
        for start in range(0, total, batch_size):
            rows = min(batch_size, total - start)
            drawn.append(self.draw(text.expand(rows, -1), embed.expand(rows, -1), steps,
                                   decoder_guidance_scale, generator, eta=eta))  # fmt: skip
        images = torch.cat(drawn)  # [total, 3, S, S]
        if total > num_images:
            scores = self.variation_scores(images, embed, text, rank, batch_size)
            images = keep_best(images, scores, num_images)[0]
        return self.upsample(images, generator)

    @torch.no_grad()
    def variation_scores(self, images: torch.Tensor, embed: torch.Tensor, text: torch.Tensor,
                         rank: str = "auto", batch_size: int = 64) -> torch.Tensor:  # fmt: skip
        """How well each of a source's variations (uint8 ``[N, 3, S, S]``) keeps it, higher
        better, ``[N]``. "clip": the cosine of their CLIP image embeddings with the
        source's (``embed``, ``[1, D]``), the embedding the decoder was given.
        "clip+likelihood": that cosine plus a transformer decoder's ``log p(variation's
        tokens | text, its own embedding)``, each standardised over the ``N``; ``text``
        (``[1, L]``) is the caption the variations were drawn with. The likelihood marks
        draws that are typical of what the decoder draws for that caption; malformed shapes
        are not. On Shapes World, with a caption read from the source, it keeps the content
        more often (BENCHMARKS.md). "auto": ``ranking``."""
        embeds = self.encode_image(images)  # [N, D]
        similarity = (embeds * embed).sum(-1).cpu()  # [N]
        if self.ranking(rank, caption=bool((text != PAD_ID).any())) == "clip":
            return similarity
        likelihood = []
        for start in range(0, len(images), batch_size):
            part = images[start : start + batch_size].to(self.device)
            tokens = self.image_tokenizer.encode(part).flatten(1)  # [n, T]
            rows = embeds[start : start + batch_size]
            likelihood.append(self.image_log_likelihood(text.expand(len(part), -1), tokens, rows))
        likelihood = torch.cat(likelihood)  # [N]
        return standardise(similarity) + standardise(likelihood)

    @torch.no_grad()
    def interpolate(
        self,
        first: torch.Tensor,
        second: torch.Tensor,
        num_images: int = 8,
        decoder_guidance_scale: float = 3.0,
        steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``num_images`` uint8 images from ``first`` to ``second`` (uint8 ``[3, S, S]``):
        the slerp of their CLIP embeddings, all decoded from the same starting noise."""
        a, b = self.encode_image(torch.stack([first, second]))
        weights = torch.linspace(0, 1, num_images).tolist()
        embeds = torch.stack([slerp(a, b, w) for w in weights])
        return self._decode_fixed_noise(embeds, decoder_guidance_scale, steps, generator)

    @torch.no_grad()
    def text_diff(
        self,
        image: torch.Tensor,
        source: str,
        target: str,
        num_images: int = 5,
        max_weight: float = 0.5,
        decoder_guidance_scale: float = 3.0,
        steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``image`` moved toward ``target`` from ``source`` (its description): the image
        embedding slerped toward the normalised difference of the captions' text
        embeddings, by weights from 0 to ``max_weight``, from the same starting noise."""
        z = self.encode_image(image[None])[0]
        _, texts = self.encode_text([source, target])
        diff = F.normalize(texts[1] - texts[0], dim=-1)
        weights = torch.linspace(0, max_weight, num_images).tolist()
        embeds = torch.stack([slerp(z, diff, w) for w in weights])
        return self._decode_fixed_noise(embeds, decoder_guidance_scale, steps, generator)

    def _decode_fixed_noise(
        self, embeds: torch.Tensor, guidance: float, steps: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        c, text = self.decoder.config, self.no_caption(len(embeds))
        if isinstance(self.decoder, TOKEN_DECODERS):  # their randomness: one seed for every image
            seed = int(torch.randint(2**62, (1,), generator=generator))
            same = [torch.Generator().manual_seed(seed) for _ in embeds]
            drawn = self.draw(text, embeds, steps, guidance, same)
        else:
            noise = torch.randn(1, c.image_channels, c.image_size, c.image_size,
                                generator=generator)  # fmt: skip
            drawn = self.draw(text, embeds, steps, guidance, generator,
                              noise=noise.expand(len(embeds), -1, -1, -1).contiguous())  # fmt: skip
        # The same upsampling noise for every image, so the sequence stays smooth.
        return self.upsample(drawn, torch.Generator().manual_seed(0))
