"""Training: data, losses, stages 0/1/2 on accelerate, calibration, recipes
(docs/method.md §4-5)."""
