"""The one predictor (pixels to detections) and the runners that compose it."""
