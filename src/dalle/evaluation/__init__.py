"""Judging and metrics for generated images."""
