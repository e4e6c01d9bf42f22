"""Model directories from strangers: clear errors, bounded memory, no code run, no pickles.

Complements tests/test_pretrained.py (missing UNet weights, wrong hyper shapes, NaN prompt).
"""

from __future__ import annotations

import ast
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import ROOT, make_image
from oscar.coding.codec import OscarCodec
from oscar.errors import FingerprintMismatchError, ModelError
from oscar.store.pretrained import load_model

VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture()
def model_copy(tmp_path, tiny_model_dir) -> Path:
    path = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, path)
    return path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("oscar.safetensors", "OSCAR weights is missing"),
        ("vae/config.json", "VAE config is missing"),
        (VAE_WEIGHTS, "VAE weights is missing"),
        ("unet/config.json", "UNet config is missing"),
        ("scheduler/scheduler_config.json", "scheduler config is missing"),
    ],
)
def test_missing_files(model_copy, missing, message):
    (model_copy / missing).unlink()
    with pytest.raises(ModelError, match=message):
        load_model(model_copy)


def test_missing_priors_is_a_model_without_entropy_coding(model_copy):
    (model_copy / "priors.safetensors").unlink()
    assert load_model(model_copy).priors is None


def test_pickled_weights_are_refused_not_loaded(model_copy):
    (model_copy / VAE_WEIGHTS).unlink()
    (model_copy / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ModelError, match=r"only pickled weights \(diffusion_pytorch_model\.bin\)"):
        load_model(model_copy)


def test_wrong_shapes_in_the_unet(model_copy):
    state = load_file(str(model_copy / UNET_WEIGHTS))
    name = next(k for k in state if k.endswith("conv_in.weight"))
    state[name] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(model_copy / UNET_WEIGHTS))
    with pytest.raises(ModelError, match=rf"wrong shape: {name}"):
        load_model(model_copy)


@pytest.mark.parametrize(
    ("file", "value"), [(VAE_WEIGHTS, float("inf")), ("oscar.safetensors", float("nan"))]
)
def test_non_finite_weights(model_copy, file, value):
    state = load_file(str(model_copy / file))
    name = sorted(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)[0]
    state[name].view(-1)[0] = value
    save_file(state, str(model_copy / file))
    with pytest.raises(ModelError, match="NaN or infinite"):
        load_model(model_copy)


def test_changed_weights_or_timesteps_refuse_old_files(tiny_codec, model_copy):
    """Any change that alters decoding changes the fingerprint: old files are refused."""
    data = tiny_codec.compress(make_image(16, 16), 3)
    state = load_file(str(model_copy / VAE_WEIGHTS))
    name = sorted(state)[0]
    state[name].view(-1)[0] += 1e-3
    save_file(state, str(model_copy / VAE_WEIGHTS))
    with pytest.raises(FingerprintMismatchError, match="made with model"):
        OscarCodec.from_pretrained(model_copy, device="cpu").decompress(data)
    shutil.copy(tiny_codec.loaded.directory / VAE_WEIGHTS, model_copy / VAE_WEIGHTS)
    assert OscarCodec.from_pretrained(model_copy, device="cpu").unpack(data).level == 3
    _edit_json(model_copy / "oscar.json", lambda d: d["config"]["levels"][3].update(timestep=281))
    with pytest.raises(FingerprintMismatchError):
        OscarCodec.from_pretrained(model_copy, device="cpu").unpack(data)


def test_class_name_must_be_the_expected_class(model_copy):
    _edit_json(model_copy / "vae/config.json", lambda d: d.update(_class_name="UNet2DModel"))
    with pytest.raises(ModelError, match="PatchAutoencoder, config declares UNet2DModel"):
        load_model(model_copy)


def test_no_code_runs_from_a_model_directory(model_copy, tmp_path):
    """Configs that name code (auto_map, a module path) are data: nothing is imported."""
    marker = tmp_path / "code-ran"
    evil = f"open({str(marker)!r}, 'w').write('x')\nclass Evil: pass\n"
    for folder in ("unet", "vae", "."):
        (model_copy / folder / "evil.py").write_text(evil)
        (model_copy / folder / "__init__.py").write_text(evil)
    _edit_json(
        model_copy / "unet/config.json",
        lambda d: d.update(auto_map={"AutoModel": "evil.Evil"}, _name_or_path="evil"),
    )
    _edit_json(
        model_copy / "scheduler/scheduler_config.json", lambda d: d.update(_class_name="evil.Evil")
    )
    load_model(model_copy)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("oscar.json", lambda d: d["config"].update(prompt_length=1e308), "integer"),
        ("oscar.json", lambda d: d["config"].update(prompt_length=10**9), "more weights"),
        ("oscar.json", lambda d: d["config"]["hyper"].update(hidden_channels=2**30), "weights"),
        ("oscar.json", lambda d: d["config"]["levels"][0].update(level=2.5), "integer"),
        ("oscar.json", lambda d: d["config"]["levels"][0].update(timestep="x"), "integer"),
        ("oscar.json", lambda d: d["config"].update(base_model=12), "base_model"),
        ("vae/config.json", lambda d: d.update(layers_per_block=2**31), "more weights"),
        ("vae/config.json", lambda d: d.update(block_out_channels=[10**9] * 4), "more weights"),
        ("vae/config.json", lambda d: d.update(down_block_types=[None] * 4), "cannot build"),
        ("unet/config.json", lambda d: d.update(layers_per_block=10**6), "more weights"),
        ("unet/config.json", lambda d: d.update(in_channels=-1), "in_channels|cannot build"),
        (
            "scheduler/scheduler_config.json",
            lambda d: d.update(num_train_timesteps=10**12),
            "num_train_timesteps",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hostile_config_values_are_refused_quickly(model_copy, file, edit, message):
    """Huge, wrongly typed or nonsensical numbers: one ModelError, within seconds, and
    nothing allocated at the size they ask for (the build is checked on the meta device)."""
    _edit_json(model_copy / file, edit)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=message):
        load_model(model_copy)
    assert time.perf_counter() - t0 < 30


def test_unparsable_json_is_a_clear_error(model_copy):
    """An integer of 5000 digits (Python refuses over 4300), nesting too deep, bad UTF-8."""
    path = model_copy / "oscar.json"
    good = path.read_text()
    cases = {
        "oscar.json": good.replace('"prompt_length": 2', '"prompt_length": ' + "9" * 5000),
        "vae/config.json": "[" * 100_000 + "]" * 100_000,
        "unet/config.json": b"\xff\xfe{",
    }
    for name, content in cases.items():
        original = (model_copy / name).read_bytes()
        if isinstance(content, str):
            (model_copy / name).write_text(content)
        else:
            (model_copy / name).write_bytes(content)
        with pytest.raises(ModelError, match="not readable JSON"):
            load_model(model_copy)
        (model_copy / name).write_bytes(original)


def test_symlinked_parts_are_fine(model_copy, tiny_model_dir):
    shutil.rmtree(model_copy / "unet")
    (model_copy / "unet").symlink_to(tiny_model_dir / "unet")
    assert load_model(model_copy).fingerprint == load_model(tiny_model_dir).fingerprint


# ----------------------------------------------------------------------------- static checks
_UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("marshal", "loads"),
    ("dill", "load"),
    ("joblib", "load"),
    ("shelve", "open"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
}


def _problems(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        pair = (
            (func.value.id, func.attr)
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            else None
        )
        keywords = {k.arg: k.value for k in node.keywords}
        is_true = {
            key
            for key, value in keywords.items()
            if isinstance(value, ast.Constant) and value.value is True
        }

        if name in ("eval", "exec") or pair in _UNSAFE_CALLS:
            found.append(f"line {node.lineno}: {name or '.'.join(pair)}")
        if pair == ("torch", "load") and "weights_only" not in is_true:
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if pair in (("np", "load"), ("numpy", "load")) and "allow_pickle" in is_true:
            found.append(f"line {node.lineno}: numpy.load with allow_pickle=True")
        if "trust_remote_code" in is_true:
            found.append(f"line {node.lineno}: trust_remote_code=True")
        value = keywords.get("use_safetensors")
        if isinstance(value, ast.Constant) and value.value is False:
            found.append(f"line {node.lineno}: use_safetensors=False")
    return found


def test_the_library_reads_no_pickle_and_runs_no_code():
    """Pickles only through a weights-only loader; no eval/exec; no remote code. A static check
    over every module, so that new code is held to it too."""
    problems = []
    for path in sorted((ROOT / "src" / "oscar").rglob("*.py")):
        for problem in _problems(ast.parse(path.read_text(), str(path))):
            problems.append(f"{path.relative_to(ROOT)} {problem}")
    assert problems == []
    bad = ast.parse("import torch\ntorch.load('x')\neval('1')\nnp.load(f, allow_pickle=True)\n")
    assert len(_problems(bad)) == 3  # the check itself works
