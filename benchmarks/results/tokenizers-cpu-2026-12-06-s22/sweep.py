"""Encoding by search at other steps and learning rates: one tokenizer, both held-out
splits judged (the first 1,000 scenes each). The sweep's figures came from an earlier
scratch version of the same search; this script, on the committed code, reproduces its
40-step row exactly.

    python sweep.py RUN STEPS LR OUT.json
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

from dalle.data.datasets import DataConfig
from dalle.evaluation.reconstruction import reconstruct_to_folder
from dalle.evaluation.shapes_judge import judge_directory
from dalle.models.image_tokenizer import load_image_tokenizer

run, steps, lr, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
tokenizer = load_image_tokenizer(run, "cpu")
tokenizer.config = replace(tokenizer.config, refine_steps=steps, refine_lr=lr,
                           refine_precision="fp32")  # fmt: skip
results = {}
for name, source in (("seen", "shapes"), ("zeroshot", "shapes:zeroshot")):
    data = DataConfig(source=source, image_size=64, subset="holdout")
    folder = out.with_suffix("") / name
    metrics = reconstruct_to_folder(tokenizer, data, 1000, folder)
    results[name] = {"accuracy": judge_directory(folder).accuracy, **metrics}
    print(name, results[name]["accuracy"], f"{metrics['psnr']:.2f} dB", flush=True)
out.write_text(json.dumps(results, indent=2))
