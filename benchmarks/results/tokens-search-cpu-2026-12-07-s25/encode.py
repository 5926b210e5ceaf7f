"""Encode demo training scenes [start, start+count) with N steps of search into OUT."""
import sys, time
from pathlib import Path
import torch
from dalle.data.datasets import DataConfig
from dalle.data.token_shards import write_token_shards
from dalle.files import folder_hash
from dalle.models.image_tokenizer import load_image_tokenizer

tok, start, count, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else 1)
model = load_image_tokenizer(tok, "cpu", steps, "bf16")
data = DataConfig(source="shapes", image_size=64, seed=0, start=start, count=count, num_workers=0)
t = time.perf_counter()
meta = write_token_shards(model, folder_hash(Path(tok)), data, out, batch_size=64, progress=False)
print(meta["samples"], "samples in", round(time.perf_counter() - t, 1), "s", flush=True)
