"""Encodes demo training scenes [START, START + COUNT) with STEPS steps of search (bf16)
into OUT, on THREADS threads: the scenes `make demo` encodes (Shapes World, seed 0).

    python encode.py TOKENIZER START COUNT STEPS OUT [THREADS]
"""

import sys
import time
from pathlib import Path

import torch

from dalle.data.datasets import DataConfig
from dalle.data.token_shards import write_token_shards
from dalle.files import folder_hash
from dalle.models.image_tokenizer import load_image_tokenizer

tokenizer, start, count, steps = sys.argv[1], *map(int, sys.argv[2:5])
out = Path(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else 1)
model = load_image_tokenizer(tokenizer, "cpu", steps, "bf16")
data = DataConfig(source="shapes", image_size=64, seed=0, start=start, count=count)
t = time.perf_counter()
meta = write_token_shards(model, folder_hash(Path(tokenizer)), data, out, progress=False)
print(meta["samples"], "samples in", round(time.perf_counter() - t, 1), "s", flush=True)
