"""How much encoding by search changes the demo's training tokens: the fraction of
tokens that differ from the encoder's, codes in use, unigram entropy (all 25,000 scenes)."""
import io, tarfile, glob, numpy as np
def read(paths):
    out = {}
    for p in paths:
        t = tarfile.open(p)
        for m in t.getmembers():
            if m.name.endswith(".npy"):
                out[m.name.split(".")[0]] = np.load(io.BytesIO(t.extractfile(m).read()))
    return out
enc = read(sorted(glob.glob("base/image_tokens/tokens-*.tar")))
srch = read(sorted(glob.glob("search40/part*/tokens-*.tar")))
keys = sorted(enc)
assert keys == sorted(srch), "different scenes"
a = np.stack([enc[k] for k in keys]); b = np.stack([srch[k] for k in keys])
def entropy(x):
    c = np.bincount(x.ravel(), minlength=1000).astype(float); p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())
print(f"scenes {len(keys)}; tokens changed by the search {np.mean(a != b):.3f}; "
      f"scenes with any token changed {np.mean((a != b).any(axis=(1, 2))):.3f}")
print(f"codes in use: encoder {len(np.unique(a))}, search {len(np.unique(b))}")
print(f"unigram entropy (bits): encoder {entropy(a):.2f}, search {entropy(b):.2f}")
