"""Training: a model-agnostic loop, checkpoints, schedules and per-model tasks."""
