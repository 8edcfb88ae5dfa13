"""Training: losses, metrics, optimisers and schedules, the trainer and its checkpoints (SPEC §8)."""
