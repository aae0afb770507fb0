"""CenterNet deployment toolkit: upstream's ctdet checkpoint on ONNX Runtime,
PyTorch or an Ascend NPU, with upstream's detections and AP.

The folders are layers, each importing only from the ones below it:
constants and errors; core and io; model and report; runtime; convert;
pipeline; bench; cli. The recipe's top-level scripts are thin front ends
over them. See docs/architecture.md.
"""
