"""Training: data, losses, stages 0/1/2 on accelerate, calibration, recipes (method.md §4-5)."""
