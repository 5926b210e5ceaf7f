"""Judge held-out scenes 1,000-1,999 per split (not those the search's settings were
chosen on), encoded in bf16 with STEPS steps of search.

    python second-thousand.py RUN STEPS OUT_DIR
"""

import json
import sys
from pathlib import Path

from dalle.data.datasets import DataConfig
from dalle.evaluation.reconstruction import reconstruct_to_folder
from dalle.evaluation.shapes_judge import judge_image, load_rgb
from dalle.models.image_tokenizer import load_image_tokenizer

run, steps, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
tokenizer = load_image_tokenizer(run, "cpu", steps, "bf16")
results = {}
for name, source in (("seen", "shapes"), ("zeroshot", "shapes:zeroshot")):
    folder = out / name
    data = DataConfig(source=source, image_size=64, subset="holdout")
    reconstruct_to_folder(tokenizer, data, 2000, folder)
    passed = [
        judge_image(load_rgb(folder / f"{i:04d}.png"), (folder / f"{i:04d}.txt").read_text()).passed
        for i in range(1000, 2000)
    ]
    results[name] = sum(passed) / len(passed)
    print(name, steps, results[name], flush=True)
print(json.dumps(results))
