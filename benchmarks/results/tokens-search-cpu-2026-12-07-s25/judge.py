"""Judges one demo transformer: sampling settings chosen on the demo's validation prompts
(as `make demo` does), then 256 + 256 fresh held-out prompts (prompt seed 5, never the
demo's), best of 32 by the demo's CLIP, and each prompt's first draw.

    python judge.py RUN CLIP OUT [THREADS]
"""

import json
import sys
import time
from pathlib import Path

import torch

from dalle.demo import DemoConfig
from dalle.evaluation.shapes_judge import judge_directory
from dalle.evaluation.text_to_image import choose_sampling, generate_and_judge, shapes_prompts
from dalle.sampling.generate import TextToImage

run, clip, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
c = DemoConfig()
pipe = TextToImage.from_pretrained(run, reranker=clip, device="cpu")
t = time.perf_counter()
best, _ = choose_sampling(pipe, c.sampling_candidates, c.validation_prompts, c.seed, c.sample_batch)
result = {
    "run": str(run),
    "sampling": {"temperature": best.temperature, "guidance": best.guidance_scale},
}
for split in ("train", "zeroshot"):
    prompts = shapes_prompts(split, 256, 64, seed=5)
    rates = generate_and_judge(
        pipe, prompts, out / split, best, seed=5, batch_size=64, candidates=32
    )
    report = judge_directory(out / split).to_json()
    result[split] = {**rates, "per_attribute": report["per_attribute"]}
result["seconds"] = round(time.perf_counter() - t)
(out / "result.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result))
