"""Numerics of the stain, free of I/O: numpy and onnxruntime only."""
