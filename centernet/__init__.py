"""CenterNet (ctdet, DLA-34 + DCNv2) deployment toolkit.

Shared logic for the recipe-named top-level scripts: the test-time affine
transform, the network and its checkpoint, ONNX export, ONNX Runtime
inference, decoding and COCO evaluation. See ../shared/REFERENCE.md for the
numeric contract every module follows.
"""
