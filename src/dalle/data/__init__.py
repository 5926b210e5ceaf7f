"""Data: the built-in Shapes World set, image-caption loaders and writers."""
