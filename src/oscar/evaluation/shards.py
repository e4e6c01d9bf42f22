"""One shard's results on disk, so that processes of a distributed run can merge them.

``save_partial(part, STEM)`` writes ``STEM.json`` (records, feature group names, crop boxes) and
``STEM.npz`` (Inception features, crop pixels); ``load_partial(STEM)`` reads them back. No pickles:
JSON and ``numpy.load(allow_pickle=False)`` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from oscar.evaluation.metrics import FeatureSet
from oscar.evaluation.records import ImageRecord
from oscar.evaluation.runner import CropSet, PartialResult


def save_partial(part: PartialResult, stem: Path) -> None:
    """``STEM.json`` (records, crop boxes) and ``STEM.npz`` (features, crops); no pickles."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for i, feats in enumerate(part.features.values()):
        for kind, value in feats.arrays().items():
            arrays[f"f{i}_{kind}"] = value.astype(np.float32)
    crops = []
    for j, cs in enumerate(part.crops):
        for k, array in enumerate(cs.crops.values()):
            arrays[f"c{j}_{k}"] = array
        crops.append(
            {
                "image": cs.image,
                "level": cs.level,
                "box": list(cs.box),
                "codecs": list(cs.crops),
                "bpp": cs.bpp,
            }
        )
    meta = {
        "records": [r.to_dict() for r in part.records],
        "features": list(part.features),
        "crops": crops,
    }
    stem.with_suffix(".json").write_text(json.dumps(meta))
    np.savez(stem.with_suffix(".npz"), **arrays)


def load_partial(stem: Path) -> PartialResult:
    meta = json.loads(stem.with_suffix(".json").read_text())
    with np.load(stem.with_suffix(".npz"), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    part = PartialResult(records=[ImageRecord.from_dict(d) for d in meta["records"]])
    for i, key in enumerate(meta["features"]):
        feats = FeatureSet()
        if arrays[f"f{i}_patches"].size:
            feats.patches.append(arrays[f"f{i}_patches"])
        if arrays[f"f{i}_whole"].size:
            feats.whole.append(arrays[f"f{i}_whole"])
        part.features[key] = feats
    for j, c in enumerate(meta["crops"]):
        cs = CropSet(c["image"], c["level"], tuple(c["box"]), bpp=dict(c["bpp"]))
        for k, codec in enumerate(c["codecs"]):
            cs.crops[codec] = arrays[f"c{j}_{k}"]
        part.crops.append(cs)
    return part
