"""Models that reference a diffusers base folder (--base-model), weight layouts, LoRA, dtypes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from helpers import CONFIGS, decode_indices, make_image
from helpers.tiny_sd import (
    save_tiny_base,
    single_thread,  # noqa: F401 (a fixture, used by pytestmark)
    tiny_sd_model,
)
from oscar.cli import main
from oscar.coding.codec import OscarCodec
from oscar.errors import ModelError
from oscar.store.pretrained import BASE_MODEL_ENV, PARTS_FILE, load_model, save_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("sd_base"))


@pytest.fixture(scope="module")
def lora_model(base_dir):
    return tiny_sd_model(base_dir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, base_dir, lora_model):
    path = tmp_path_factory.mktemp("on_base") / "model"
    save_model(lora_model, path, include_base=False)
    return path


def test_model_directory_references_the_base(model_dir, base_dir, lora_model):
    assert sorted(p.name for p in model_dir.iterdir()) == ["oscar.json", PARTS_FILE]
    meta = json.loads((model_dir / "oscar.json").read_text())
    assert meta["config"]["base_model"] == str(base_dir)
    assert meta["base"]["scheduler"]["prediction_type"] == "v_prediction"
    loaded = load_model(model_dir).model
    assert loaded.unet_adapter is not None and loaded.unet_adapter.merged
    assert not any(".lora_" in n for n, _ in loaded.unet.named_parameters())  # merged, no peft
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 16, (1, 4, 4), generator=g)
    codes = torch.tensor([[150, 160, 170, 180]], dtype=torch.uint8)
    with torch.no_grad():
        want = decode_indices(lora_model, indices, codes, 4)  # peft, unmerged
        got = decode_indices(loaded, indices, codes, 4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_info_describes_a_model_on_a_base(model_dir, base_dir, capsys):
    assert main(["info", "--model", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base_model"] == str(base_dir.resolve())
    assert info["lora"]["rank"] == 2 and info["lora"]["modules"] > 0
    assert info["fingerprint"] == load_model(model_dir).fingerprint.hex()


def test_base_model_option_and_environment(tmp_path, model_dir, base_dir, monkeypatch):
    moved = tmp_path / "elsewhere"
    shutil.copytree(base_dir, moved)
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    meta = json.loads((model / "oscar.json").read_text())
    meta["config"]["base_model"] = str(tmp_path / "gone")
    (model / "oscar.json").write_text(json.dumps(meta))
    monkeypatch.delenv(BASE_MODEL_ENV, raising=False)
    with pytest.raises(ModelError, match=r"gone.*does not exist; pass --base-model"):
        load_model(model)
    expected = load_model(model_dir).fingerprint
    assert load_model(model, base_model=moved).fingerprint == expected
    monkeypatch.setenv(BASE_MODEL_ENV, str(moved))
    assert load_model(model).fingerprint == expected
    monkeypatch.delenv(BASE_MODEL_ENV)

    image = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(make_image(40, 56)).save(image)
    common = ["--model", str(model), "--base-model", str(moved), "--device", "cpu"]
    assert (
        main(["compress", str(image), "-o", str(tmp_path / "a.oscar"), "--level", "5", *common])
        == 0
    )
    assert (
        main(["decompress", str(tmp_path / "a.oscar"), "-o", str(tmp_path / "a.png"), *common]) == 0
    )
    assert Image.open(tmp_path / "a.png").size == (56, 40)


def test_fingerprint_covers_base_weights(tmp_path, model_dir, base_dir):
    base = tmp_path / "base"
    shutil.copytree(base_dir, base)
    before = load_model(model_dir, base_model=base).fingerprint
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(1e-3)
    unet.save_pretrained(base / "unet")
    assert load_model(model_dir, base_model=base).fingerprint != before


def test_sharded_and_fp16_variant_layouts(tmp_path, model_dir, base_dir):
    expected = load_model(model_dir).fingerprint
    sharded = tmp_path / "sharded"
    shutil.copytree(base_dir, sharded)
    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    (sharded / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(sharded / "unet", max_shard_size="20KB")
    assert (sharded / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((sharded / "unet").glob("*.safetensors"))) > 2
    assert load_model(model_dir, base_model=sharded).fingerprint == expected  # same tensors

    half = tmp_path / "fp16"
    shutil.copytree(base_dir, half)
    (half / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.half().save_pretrained(half / "unet", variant="fp16")
    assert (half / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = load_model(model_dir, base_model=half)
    assert loaded.fingerprint != expected  # other weights (rounded to float16), other model
    assert loaded.model.unet.dtype == torch.float32  # stored float16, run float32

    broken = tmp_path / "broken_shards"
    shutil.copytree(sharded, broken)
    next(iter(sorted((broken / "unet").glob("*-00002-*.safetensors")))).unlink()
    with pytest.raises(ModelError, match="UNet shard is missing"):
        load_model(model_dir, base_model=broken)


def test_clear_errors_for_missing_or_mismatched_parts(tmp_path, model_dir, base_dir):
    def copy(name):
        shutil.copytree(base_dir, tmp_path / name)
        return tmp_path / name

    no_unet = copy("no_unet")
    shutil.rmtree(no_unet / "unet")
    with pytest.raises(ModelError, match=r"UNet config is missing: .*no_unet/unet/config\.json"):
        load_model(model_dir, base_model=no_unet)

    pickled = copy("pickled")
    weights = pickled / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelError, match=r"only pickled weights .*\.bin.*safetensors only"):
        load_model(model_dir, base_model=pickled)

    epsilon = copy("epsilon")
    path = epsilon / "scheduler" / "scheduler_config.json"
    path.write_text(path.read_text().replace("v_prediction", "epsilon"))
    with pytest.raises(ModelError, match=r"scheduler config differs .*prediction_type 'epsilon'"):
        load_model(model_dir, base_model=epsilon)

    other_class = copy("other_class")
    path = other_class / "unet" / "config.json"
    path.write_text(path.read_text().replace("UNet2DConditionModel", "UNet2DModel"))
    with pytest.raises(ModelError, match="expected a UNet2DConditionModel"):
        load_model(model_dir, base_model=other_class)

    wider = copy("wider")
    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    state = unet.state_dict()
    state["conv_in.weight"] = torch.zeros(8, 4, 5, 5)
    from safetensors.torch import save_file

    save_file(state, str(wider / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelError, match=r"wrong shape: conv_in\.weight"):
        load_model(model_dir, base_model=wider)


def test_dtypes_interchange(model_dir):
    """Files made in one dtype decode in another (indices are coded from integers)."""
    f32 = OscarCodec.from_pretrained(model_dir, device="cpu")
    bf16 = OscarCodec.from_pretrained(model_dir, device="cpu", dtype="bfloat16")
    assert bf16.model.unet.dtype == torch.bfloat16 and bf16.model.vae.dtype == torch.bfloat16
    assert bf16.model.hyper["0"].g_a[0].weight.dtype == torch.float32
    assert bf16.fingerprint == f32.fingerprint
    image = make_image(48, 64, seed=3)
    made_f32, made_bf16 = f32.compress(image, 7), bf16.compress(image, 7)
    a, b = f32.decompress(made_bf16), bf16.decompress(made_f32)
    assert a.shape == b.shape == image.shape
    ref = f32.decompress(made_f32)
    assert np.abs(b.astype(int) - ref).mean() < 4.0  # bfloat16 rounding, same image
    f16 = OscarCodec.from_pretrained(model_dir, device="cpu", dtype="float16")
    assert f16.model.unet.dtype == torch.float16
    assert f16.model.vae.dtype == torch.float32  # SD's VAE overflows in float16 (force_upcast)
    assert f16.fingerprint == f32.fingerprint
    made_f16 = f16.compress(image, 7)
    c = f16.decompress(made_f32)
    assert f32.decompress(made_f16).shape == c.shape == image.shape
    assert np.abs(c.astype(int) - ref).mean() < 2.0  # float16 UNet, float32 VAE
    # The LoRA is merged at load time in float32 maths: the float16 weights are the merged
    # float32 ones up to float16 rounding.
    merged32 = load_model(model_dir).model.unet.state_dict()
    for name, w in f16.model.unet.state_dict().items():
        torch.testing.assert_close(w, merged32[name].half(), rtol=2e-3, atol=2e-3, msg=name)


def test_training_load_keeps_peft_and_saves_back(tmp_path, model_dir):
    """merge_lora=False gives peft adapters holding the stored factors; saving restores the file."""
    merged = load_model(model_dir).model
    wrapped = load_model(model_dir, merge_lora=False).model
    assert any(".lora_A." in n for n, _ in wrapped.unet.named_parameters())
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        a, b = merged.denoise(z, 300), wrapped.denoise(z, 300)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    again = tmp_path / "again"
    assert save_model(wrapped, again, include_base=False) == load_model(model_dir).fingerprint
    with pytest.raises(ModelError, match="merged into its UNet"):
        save_model(merged, tmp_path / "full")


def test_fresh_lora_model_saves_an_identity_lora(tmp_path, base_dir):
    """`oscar init` of a LoRA config: B = 0, so the UNet is the base until trained."""
    from helpers.tiny_sd import tiny_sd_config
    from oscar.models.oscar import OscarModel

    model = OscarModel(tiny_sd_config(base_dir))
    save_model(model, tmp_path / "fresh")
    loaded = load_model(tmp_path / "fresh").model
    for (name, p), (_, q) in zip(
        model.unet.named_parameters(), loaded.unet.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_calibrate_and_export_keep_the_base_reference(tmp_path, model_dir, base_dir, sample_dir):
    """`oscar calibrate` rewrites only the rate table; `oscar export` converts only the model's
    own parts and keeps the LoRA apart: both still reference the base folder."""
    work = tmp_path / "model"
    shutil.copytree(model_dir, work)
    before = json.loads((work / "oscar.json").read_text())
    assert main(["calibrate", str(work), "--data", str(sample_dir), "--levels", "3"]) == 0
    after = json.loads((work / "oscar.json").read_text())
    assert after["base"] == before["base"]
    assert after["config"]["base_model"] == before["config"]["base_model"]
    assert after["config"]["levels"][3]["cosine"] is not None
    load_model(work)

    out = tmp_path / "half"
    assert main(["export", str(work), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["oscar.json", PARTS_FILE]
    from safetensors.torch import load_file

    parts = load_file(str(out / PARTS_FILE))
    assert {v.dtype for v in parts.values()} == {torch.float16}
    assert any(k.startswith("unet_lora.") for k in parts)
    half = OscarCodec.from_pretrained(out, device="cpu")
    image = make_image(40, 48, seed=2)
    assert half.decompress(half.compress(image, 3)).shape == image.shape


def test_init_on_a_base_folder(tmp_path, base_dir):
    """`oscar init CONFIG --base-model DIR`: new OSCAR parts on the folder's VAE and UNet,
    referenced, not copied; the LoRA starts as the identity."""
    out = tmp_path / "fresh"
    config = tmp_path / "tiny-lora.json"
    data = json.loads((CONFIGS / "tiny.json").read_text())
    data["lora"] = {"rank": 2, "alpha": 2, "target_modules": ["to_q", "to_k", "to_v"]}
    config.write_text(json.dumps(data))
    assert main(["init", str(config), "-o", str(out), "--base-model", str(base_dir)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["oscar.json", PARTS_FILE]
    loaded = load_model(out).model
    base_unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    for name, p in base_unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], p), name
    assert loaded.schedule.prediction_type == "v_prediction"  # the base's scheduler
    codec = OscarCodec.from_pretrained(out, device="cpu")
    image = make_image(40, 48, seed=6)
    assert codec.decompress(codec.compress(image, 2)).shape == image.shape
