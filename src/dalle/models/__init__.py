"""Models: each a typed dataclass config plus an nn.Module, with named presets."""
