"""Content fingerprints of input folders (a trained tokenizer, say)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_hash(folder: Path) -> str:
    """SHA-256 over the names and bytes of the files directly in ``folder`` (16 hex digits)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]
