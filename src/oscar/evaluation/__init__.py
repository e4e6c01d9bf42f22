"""Evaluation: real-byte rates, metrics, classical baselines, BD-rate, plots and an HTML report.

Modules (one job each):

- ``weights``     find the standard pretrained weight files on disk (never downloads)
- ``backbones``   self-contained AlexNet / VGG16 feature extractors with torchvision's key names
- ``perceptual``  LPIPS (Alex, VGG) and DISTS as differentiable modules (also training losses)
- ``fid``         the FID Inception network, patch extraction, FID and KID
- ``metrics``     PSNR, MS-SSIM and the per-image metric suite
- ``baselines``   JPEG, WebP, AVIF, JPEG XL, JPEG 2000 through imagecodecs; rate matching
- ``records``     typed per-image and aggregate records, JSON/CSV in and out
- ``runner``      the evaluation loop (``evaluate_oscar`` for training validation, and the
                  full protocol: ``evaluate_images`` + ``finalize``)
- ``shards``      one process's partial results on disk, merged by process 0
- ``bdrate``      Bjøntegaard delta rate against an anchor
- ``plots``       rate–distortion plots (PNG and SVG)
- ``report``      the HTML report with crops and a comparison slider

Nothing here downloads anything: networks load weight files the user put on disk, and a metric
whose weights are missing is skipped with one line saying which file to put where.
"""
