"""Generation: sampling image tokens from the transformer."""
