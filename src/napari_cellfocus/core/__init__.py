"""Numpy-only science: no torch, no Qt."""
