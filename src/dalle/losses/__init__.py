"""Training objectives as small pure functions."""
