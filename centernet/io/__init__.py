"""Files and formats: .bin tensors, meta.json, COCO, images and videos, resumable blocks, generated data."""
