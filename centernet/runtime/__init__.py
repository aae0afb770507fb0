"""The Session interface and its backends: ONNX Runtime, PyTorch, Ascend's ais_bench."""
