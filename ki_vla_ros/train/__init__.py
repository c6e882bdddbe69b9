"""Offline training: the trainer behind `ki-vla train`, checkpoints, π0.5 weight import."""
