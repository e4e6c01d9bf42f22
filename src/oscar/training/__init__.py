"""Training: data, losses, the stages of a recipe (one module per kind, ``stages/``) on
accelerate, calibration (docs/method.md §4-5)."""
