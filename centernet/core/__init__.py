"""Numerics, numpy only: the test transform, test modes, decoding, soft-NMS, parity, timing."""
