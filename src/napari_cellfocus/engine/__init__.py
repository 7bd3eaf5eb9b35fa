"""Torch engine: networks, losses, training, prediction, checkpoints. No Qt."""
