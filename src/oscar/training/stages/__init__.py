"""Training stages, one module per recipe ``kind``: ``vae``, ``diffusion``, ``hyper``, ``joint``,
``decoder``; ``base`` holds what they share. (``calibrate``, ``priors`` and ``add_level`` train
nothing: ``oscar.training.calibration``, ``oscar.training.recipe``, ``oscar.training.add_level``.)
"""
