"""Checkpoint to ONNX (ONNX Runtime and Ascend targets), its float64 self-check, and the export cache."""
