"""Would the decoder's likelihood rank unCLIP's text-to-image draws better than the CLIP?
For Shapes World test (or validation) prompts, the demo's pipeline draws ``--draws``
images per prompt at the demo's sampling settings. Each is judged (every stated
attribute) and scored by the CLIP's similarity with the prompt, by the transformer
decoder's log p(its tokens | prompt, its own embedding), and by the two standardised and
added. Reports the judged pass rate of each ranking's first image among the first K
draws, K = 4, 8 and ``--draws``.

    python benchmarks/unclip_prompt_ranking.py [--unclip outputs/demo-unclip] [--draws 32]
        [--validation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dalle.evaluation.shapes_judge import judge_image
from dalle.evaluation.text_to_image import shapes_prompts
from dalle.sampling.rerank import standardise
from dalle.sampling.unclip import UnCLIP


def draws(pipe: UnCLIP, split: str, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """``[P, draws]`` scores and verdicts of each prompt's draws."""
    prompts = shapes_prompts(split, 64, 64, 0, validation=args.validation)
    out = pipe(prompts, args.draws, prior_num_inference_steps=args.prior_steps,
               decoder_guidance_scale=args.guidance, generator=torch.Generator().manual_seed(0),
               batch_size=256)  # fmt: skip
    images = out.images.flatten(0, 1)  # [P * draws, 3, S, S]
    rows = [p for p in prompts for _ in range(args.draws)]
    likelihood = []
    for start in range(0, len(images), 64):
        part, text = images[start : start + 64], pipe.encode_text(rows[start : start + 64])[0]
        tokens = pipe.image_tokenizer.encode(part).flatten(1)
        likelihood.append(pipe.image_log_likelihood(text, tokens, pipe.encode_image(part)))
    passed = [judge_image(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), caption).passed
              for image, caption in zip(images, rows, strict=True)]  # fmt: skip
    shape = (len(prompts), args.draws)
    return {"clip": out.scores, "likelihood": torch.cat(likelihood).view(shape),
            "passed": torch.tensor(passed).view(shape)}  # fmt: skip


def first_pass_rate(scores: dict[str, torch.Tensor], ranking: str, k: int) -> float:
    hits = 0
    for clip, likelihood, passed in zip(scores["clip"][:, :k], scores["likelihood"][:, :k],
                                        scores["passed"][:, :k], strict=True):  # fmt: skip
        both = standardise(clip) + standardise(likelihood)
        score = {"clip": clip, "likelihood": likelihood, "clip+likelihood": both}[ranking]
        hits += int(passed[int(score.argmax())])
    return hits / len(scores["passed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unclip", type=Path, default=Path("outputs/demo-unclip"))
    parser.add_argument("--draws", type=int, default=32)
    # The unCLIP demo's sampling for its transformer decoder (demo_unclip.DECODER_SAMPLING).
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--prior-steps", type=int, default=8)
    parser.add_argument("--validation", action="store_true",
                        help="the validation prompts, not the test ones")  # fmt: skip
    args = parser.parse_args()
    pipe = UnCLIP.from_pretrained(args.unclip / "decoder", args.unclip / "prior",
                                  precision="bf16")  # fmt: skip
    pipe.decoder_temperature = args.temperature
    print("| split | ranking | " + " | ".join(f"best of {k}" for k in (4, 8, args.draws)) + " |")
    for split in ("train", "zeroshot"):
        scores = draws(pipe, split, args)
        for ranking in ("clip", "likelihood", "clip+likelihood"):
            rates = [first_pass_rate(scores, ranking, k) for k in (4, 8, args.draws)]
            print(f"| {split} | {ranking} | " + " | ".join(f"{r:.1%}" for r in rates) + " |")


if __name__ == "__main__":
    main()
