"""How much encoding by search changes the demo's training tokens: the fraction of tokens
that differ from the encoder's, codes in use, unigram entropy (all 25,000 scenes). Run in
the experiment folder (base/image_tokens: the encoder's; search40/part*: the search's)."""

import glob
import io
import tarfile

import numpy as np


def read(paths: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".npy"):
                    data = tar.extractfile(member).read()
                    out[member.name.split(".")[0]] = np.load(io.BytesIO(data))
    return out


def entropy(tokens: np.ndarray) -> float:
    counts = np.bincount(tokens.ravel(), minlength=1000).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


encoder = read(sorted(glob.glob("base/image_tokens/tokens-*.tar")))
search = read(sorted(glob.glob("search40/part*/tokens-*.tar")))
keys = sorted(encoder)
assert keys == sorted(search), "different scenes"
a = np.stack([encoder[k] for k in keys])
b = np.stack([search[k] for k in keys])
print(
    f"scenes {len(keys)}; tokens changed by the search {np.mean(a != b):.3f}; "
    f"scenes with any token changed {np.mean((a != b).any(axis=(1, 2))):.3f}"
)
print(f"codes in use: encoder {len(np.unique(a))}, search {len(np.unique(b))}")
print(f"unigram entropy (bits): encoder {entropy(a):.2f}, search {entropy(b):.2f}")
