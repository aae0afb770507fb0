"""CenterNet (ctdet, DLA-34 + DCNv2) deployment toolkit.

Shared logic for the recipe-named top-level scripts: the test-time affine
transform, the network and its checkpoint, ONNX export, ONNX Runtime
inference, decoding and COCO evaluation. Each numeric module names the
upstream CenterNet file whose semantics it restates.
"""
