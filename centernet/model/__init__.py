"""The network in PyTorch: upstream checkpoints, the DCN kernel, calibrated test weights, the demo's weights."""
