"""Importing the original release's oscar.pkl (docs/official-checkpoint.md, cited as §n).

The synthetic checkpoints here are written from the reference document alone: the key layout and
shapes of §2.3 and §3, the three module lists built with the original's rule (§3.1), the peft
names of §3.2. The "direct computation" re-implements the original's inference (§2.2, §2.4, §5)
with functional ops on the checkpoint's own tensors and peft's unmerged adapters, and the
converted model must decode like it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from helpers import ROOT, decode_indices, make_image
from helpers.tiny_sd import (  # noqa: F401 (single_thread: a fixture)
    ADAPTERS,
    SD21,
    original_lora_lists,
    save_tiny_base,
    single_thread,
)
from oscar.cli import main
from oscar.coding.codec import OscarCodec
from oscar.errors import ModelError
from oscar.io import image_to_tensor, tensor_to_image
from oscar.models.norms import dequantize_rms
from oscar.store.convert_official import convert_official, load_checkpoint, map_checkpoint
from oscar.store.pretrained import load_model

APPENDIX_A = json.loads((ROOT / "tests" / "data" / "sd21_lora_modules.json").read_text())
# (grid factor → cfg_ss = 512 / f, K, t) per level: §2.1 and §5.
LEVELS = [(8, 256, 500), (16, 1024, 400), (32, 256, 310), (32, 2048, 280)]
LEVELS += [(64, 16, 210), (64, 32, 190), (64, 64, 170), (64, 256, 150)]

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- §2.3 key layout
def official_level_shapes(n: int, m: int, d: int, cfg_ss: int, k: int) -> dict[str, tuple]:
    """The 208 keys of one HEAD-layout level with their shapes, in file order (§2.2, §2.3)."""
    s0, s4, s9 = cfg_ss < 16, cfg_ss < 32, cfg_ss != 64  # §2.1 rules
    out: dict[str, tuple] = OrderedDict()

    def conv(prefix, cout, cin, ks):
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = (cout, cin, ks, ks), (cout,)

    def bottleneck(prefix, c, sub):
        conv(f"{prefix}.{sub}.0", c // 2, c, 1)
        conv(f"{prefix}.{sub}.2", c // 2, c // 2, 3)
        conv(f"{prefix}.{sub}.4", c, c // 2, 1)

    def attention(prefix, c):
        for branch in ("conv_a", "conv_b"):
            for i in range(3):
                bottleneck(f"{prefix}.{branch}.{i}", c, "conv")
        conv(f"{prefix}.conv_b.3", c, c, 1)

    conv("backbone.0", n, 4, 5 if s0 else 1)
    for i in (1, 2, 3):
        bottleneck(f"backbone.{i}", n, "layers")
    conv("backbone.4", n, n, 5 if s4 else 1)
    for i in (5, 6, 7):
        bottleneck(f"backbone.{i}", n, "layers")
    attention("backbone.8", n)
    conv("backbone.9", n, n, 5 if s9 else 1)
    for i in (10, 11, 12):
        bottleneck(f"backbone.{i}", n, "layers")
    conv("backbone.13", m, n, 1)
    attention("backbone.14", m)
    for i, strided in ((0, s0), (4, s4), (8, s9)):
        conv(f"proj.{i}", m, m, 5 if strided else 1)  # ConvTranspose2d when 5 ([in, out, k, k])
        for j in range(i + 1, i + 4):
            bottleneck(f"proj.{j}", m, "layers")
    conv("proj.12", 4, m, 1)
    out["quantizer.project_in.weight"], out["quantizer.project_in.bias"] = (d, m), (d,)
    out["quantizer.project_out.weight"], out["quantizer.project_out.bias"] = (m, d), (m,)
    out["quantizer._codebook.initted"] = (1,)
    out["quantizer._codebook.cluster_size"] = (1, k)
    out["quantizer._codebook.embed_avg"] = (1, k, d)
    out["quantizer._codebook.embed"] = (1, k, d)
    return out


def lora_shapes(weight_shape, rank):
    if len(weight_shape) == 4:
        return (rank, weight_shape[1], *weight_shape[2:]), (weight_shape[0], rank, 1, 1)
    return (rank, weight_shape[1]), (weight_shape[0], rank)


def make_checkpoint(unet, widths=(8, 8, 4), prompt_length=3, rank=2, seed=0, make=None):
    """A checkpoint dict in the original's layout (§1). ``make(shape, key)`` builds tensors."""
    g = torch.Generator().manual_seed(seed)
    n, m, d = widths

    def random(shape, key):
        if key.endswith("_codebook.embed"):
            return F.normalize(torch.randn(shape, generator=g), dim=-1)
        if key.endswith("initted"):
            return torch.ones(shape)
        scale = 0.3 if len(shape) > 1 else 0.02
        if len(shape) == 4:
            scale = 1.0 / (shape[1] * shape[2] * shape[3]) ** 0.5
        return torch.randn(shape, generator=g) * scale

    make = make or random
    hyper = OrderedDict()
    for level, (cfg_ss, k, _) in enumerate(LEVELS):
        for key, shape in official_level_shapes(n, m, d, cfg_ss, k).items():
            hyper[f"{level}.{key}"] = make(shape, key)
    lists = original_lora_lists(unet)
    params = dict(unet.named_parameters())
    state = {}
    for adapter in ADAPTERS:
        for module in lists[adapter]:
            a_shape, b_shape = lora_shapes(tuple(params[f"{module}.weight"].shape), rank)
            state[f"{module}.lora_A.{adapter}.weight"] = make(a_shape, "lora_A") / rank
            state[f"{module}.lora_B.{adapter}.weight"] = make(b_shape, "lora_B")
    state["conv_in.base_layer.weight"] = make(tuple(params["conv_in.weight"].shape), "conv_in")
    state["conv_in.base_layer.bias"] = make(tuple(params["conv_in.bias"].shape), "conv_in.b")
    cross = unet.config.cross_attention_dim
    return {
        "hyper_encoders": hyper,
        "embeddings": torch.nn.Parameter(make((prompt_length, cross), "embeddings")),
        "unet_lora_encoder_modules": lists["default_encoder"],
        "unet_lora_decoder_modules": lists["default_decoder"],
        "unet_lora_others_modules": lists["default_others"],
        "rank_unet": rank,
        "state_dict_unet": state,
    }


# ----------------------------------------------------------------------------- §2.4, §5 direct
def _conv(s, p, x, transpose=False):
    w, b = s[f"{p}.weight"], s[f"{p}.bias"]
    if w.shape[-1] == 5:
        if transpose:
            return F.conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1)
        return F.conv2d(x, w, b, stride=2, padding=2)
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2)


def _bottleneck(s, p, x, sub="layers"):
    h = F.relu(_conv(s, f"{p}.{sub}.0", x))
    h = F.relu(_conv(s, f"{p}.{sub}.2", h))
    return _conv(s, f"{p}.{sub}.4", h)


def _attention(s, p, x):
    a, b = x, x
    for i in range(3):
        a = F.relu(a + _bottleneck(s, f"{p}.conv_a.{i}", a, "conv"))  # ResidualUnit
        b = F.relu(b + _bottleneck(s, f"{p}.conv_b.{i}", b, "conv"))
    return x + a * torch.sigmoid(_conv(s, f"{p}.conv_b.3", b))


def direct_backbone(s, y):
    x = _conv(s, "backbone.0", y)
    for i in (1, 2, 3):
        x = x + _bottleneck(s, f"backbone.{i}", x)  # no ReLU after the sum
    x = _conv(s, "backbone.4", x)
    for i in (5, 6, 7):
        x = x + _bottleneck(s, f"backbone.{i}", x)
    x = _attention(s, "backbone.8", x)
    x = _conv(s, "backbone.9", x)
    for i in (10, 11, 12):
        x = x + _bottleneck(s, f"backbone.{i}", x)
    return _attention(s, "backbone.14", _conv(s, "backbone.13", x))


def direct_proj(s, u):
    x = u
    for i in (0, 4, 8):
        x = _conv(s, f"proj.{i}", x, transpose=True)
        for j in range(i + 1, i + 4):
            x = x + _bottleneck(s, f"proj.{j}", x)
    return _conv(s, "proj.12", x)


def direct_indices(s, y):
    u = direct_backbone(s, y)
    b, m, h, w = u.shape
    p = F.linear(u.permute(0, 2, 3, 1).reshape(b, h * w, m), *_linear(s, "project_in"))
    p_hat = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return (p_hat @ s["quantizer._codebook.embed"][0].t()).argmax(-1).reshape(b, h, w)


def direct_y_tilde(s, indices):
    q = s["quantizer._codebook.embed"][0][indices]  # stored rows, no normalisation
    u = F.linear(q, *_linear(s, "project_out")).permute(0, 3, 1, 2)
    return direct_proj(s, u)


def _linear(s, name):
    return s[f"quantizer.{name}.weight"], s[f"quantizer.{name}.bias"]


def official_unet(base, ckpt):
    """The base UNet with the three adapters as the original's load_ckpt leaves it (§3)."""
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(base / "unet").eval()
    for key, adapter in zip(
        ("unet_lora_encoder_modules", "unet_lora_decoder_modules", "unet_lora_others_modules"),
        ADAPTERS,
        strict=True,
    ):
        config = LoraConfig(
            r=ckpt["rank_unet"], init_lora_weights="gaussian", target_modules=ckpt[key]
        )
        unet.add_adapter(config, adapter_name=adapter)
    unet.set_adapter(list(ADAPTERS))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora" in name or "conv_in" in name:
                p.copy_(ckpt["state_dict_unet"][name])
    return unet


def direct_decode(ckpt, unet, vae, level, indices, rms_codes):
    s = {
        k.split(".", 1)[1]: v
        for k, v in ckpt["hyper_encoders"].items()
        if k.split(".", 1)[0] == str(level)
    }
    y_tilde = direct_y_tilde(s, indices)
    target = dequantize_rms(rms_codes)  # the file's side information (the original used y's)
    current = y_tilde.pow(2).mean(dim=(2, 3)).sqrt()
    z = y_tilde * (target / current)[:, :, None, None]
    t = LEVELS[level][2]
    context = ckpt["embeddings"].detach().unsqueeze(0).expand(z.shape[0], -1, -1)
    v = unet(z, torch.tensor(t), encoder_hidden_states=context).sample
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    ab = torch.cumprod(1 - betas, 0)[t]
    y_hat = ab.sqrt() * z - (1 - ab).sqrt() * v
    return vae.decode(y_hat / 0.18215).sample.clamp(-1, 1)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("sd21_tiny"), seed=4)


@pytest.fixture(scope="module")
def ckpt(base):
    return make_checkpoint(UNet2DConditionModel.from_pretrained(base / "unet"))


@pytest.fixture(scope="module")
def pkl(tmp_path_factory, ckpt):
    path = tmp_path_factory.mktemp("release") / "oscar.pkl"
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, pkl, base):
    out = tmp_path_factory.mktemp("converted") / "model"
    report = convert_official(pkl, base, out)
    return out, report


# ----------------------------------------------------------------------------- tests
def test_reference_layout_counts():
    """The generator reproduces the reference's totals at SD 2.1 widths (§1, §2.3, §2.6)."""
    total = params = 0
    for cfg_ss, k, _ in LEVELS:
        shapes = official_level_shapes(192, 320, 32, cfg_ss, k)
        assert len(shapes) == 208
        sizes = {key: int(np.prod(s)) for key, s in shapes.items()}
        total += sum(sizes.values())
        params += sum(v for key, v in sizes.items() if "_codebook" not in key)
    assert (total, params) == (82_077_848, 81_820_960)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # three adapters, as §3.2
def test_converts_and_decodes_like_the_original(converted, base, ckpt):
    out, report = converted
    assert report.levels == 8 and report.hyper_tensors == 8 * 208
    assert len(report.dropped) == 24 and report.fingerprint is not None
    assert report.conv_in_difference is not None and report.conv_in_difference > 0
    meta = json.loads((out / "oscar.json").read_text())
    assert [lv["timestep"] for lv in meta["config"]["levels"]] == [
        500,
        400,
        310,
        280,
        210,
        190,
        170,
        150,
    ]
    assert meta["config"]["lora"]["alpha"] == 8 and meta["config"]["lora"]["rank"] == 2
    assert meta["base"]["scheduler"]["prediction_type"] == "v_prediction"
    assert not (out / "unet").exists()  # references the base, copies nothing

    # effort 0: the original's encoder is the nearest-codeword choice, which this compares with.
    codec = OscarCodec.from_pretrained(out, device="cpu", effort=0)
    assert codec.model.scaling_factor == pytest.approx(0.18215)
    image = make_image(64, 128, seed=5)  # a multiple of 64: no padding on either side
    x = image_to_tensor(image)
    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    unet = official_unet(base, ckpt)
    with torch.no_grad():
        y = vae.encode(x).latent_dist.mean * 0.18215
    for level in (0, 3, 7):
        record = codec.encode(image, level)
        s = {
            k.split(".", 1)[1]: v
            for k, v in ckpt["hyper_encoders"].items()
            if k.split(".", 1)[0] == str(level)
        }
        with torch.no_grad():
            want_indices = direct_indices(s, y)[0].numpy()
            codes = torch.from_numpy(record.rms_codes).unsqueeze(0)
            idx = torch.from_numpy(want_indices)[None]
            want = direct_decode(ckpt, unet, vae, level, idx, codes)
            got = decode_indices(codec.model, torch.from_numpy(record.indices)[None], codes, level)
        np.testing.assert_array_equal(record.indices, want_indices)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
        decoded = codec.decompress(codec.compress(image, level, coder="fixed"))
        assert np.abs(decoded.astype(int) - tensor_to_image(want)).max() <= 1


def test_full_size_key_set_maps(base):
    """The real SD 2.1 key set and shapes (Appendix A, §2.3) map without allocating anything."""

    def meta(shape, key):
        return torch.empty(shape, device="meta")

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SD21["unet"])
    ckpt = make_checkpoint(unet, widths=(192, 320, 32), prompt_length=77, rank=16, make=meta)
    for adapter, key in zip(
        ADAPTERS,
        ("unet_lora_encoder_modules", "unet_lora_decoder_modules", "unet_lora_others_modules"),
        strict=True,
    ):
        assert ckpt[key] == [row[0] for row in APPENDIX_A[adapter]]  # §3.1 = Appendix A
    lora_elements = sum(int(np.prod(t.shape)) for t in ckpt["state_dict_unet"].values())
    assert len(ckpt["state_dict_unet"]) == 518 and lora_elements == 16_234_688  # §1
    mapped = map_checkpoint(ckpt, SD21["vae"], SD21["unet"], SD21["scheduler"])
    assert len(mapped.parts) == 8 * 205 + 1 + 516 + 2
    assert mapped.config.hyper.hidden_channels == 192 and mapped.config.prompt_length == 77
    assert mapped.report.lora_modules == {
        "default_encoder": 94,
        "default_decoder": 148,
        "default_others": 16,
    }
    assert mapped.parts["hyper.3.quantizer.codebook"].shape == (2048, 32)
    assert mapped.parts["hyper.0.g_s.0.weight"].shape == (320, 320, 5, 5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda c: c.pop("rank_unet"), r"missing keys \['rank_unet'\]"),
        (
            lambda c: c["hyper_encoders"].pop("3.backbone.5.layers.2.bias"),
            r"level 3 .*missing: backbone\.5\.layers\.2\.bias",
        ),
        (
            lambda c: c["hyper_encoders"].update({"5.backbone.15.weight": torch.zeros(1)}),
            r"level 5 .*unexpected: backbone\.15\.weight",
        ),
        (
            lambda c: c["hyper_encoders"].update(
                {"1.quantizer._codebook.embed": torch.zeros(1, 512, 4)}
            ),
            r"level 1 \(grid factor 32, codebook 1024\).*wrong shape: quantizer\._codebook\.embed",
        ),
        (
            lambda c: c["hyper_encoders"].update({"0.backbone.0.weight": torch.zeros(8, 4, 1, 1)}),
            r"level 0 .*wrong shape: backbone\.0\.weight",
        ),
        (
            lambda c: c["hyper_encoders"].update(
                {"0.backbone.4.attn.in_proj_weight": torch.zeros(24, 8)}
            ),
            "old hyper-encoder layout",
        ),
        (
            lambda c: c["state_dict_unet"].pop("conv_out.lora_B.default_decoder.weight"),
            r"missing 'conv_out\.lora_B\.default_decoder\.weight'",
        ),
        (
            lambda c: c["state_dict_unet"].update(
                {"time_embedding.linear_1.lora_A.x": torch.ones(1)}
            ),
            "does not know: time_embedding",
        ),
        (lambda c: c["unet_lora_others_modules"].append("conv_in"), "listed for two adapters"),
        (
            lambda c: c["state_dict_unet"].update(
                {"conv_in.lora_A.default_encoder.weight": torch.zeros(2, 4, 1, 1)}
            ),
            r"wrong shape: unet_lora\.conv_in\.lora_A\.weight",
        ),
        (lambda c: c.update(embeddings=torch.zeros(3, 5)), "cross_attention_dim 8"),
    ],
)
def test_mismatched_checkpoints_are_refused(tmp_path, base, ckpt, change, message):
    broken = {k: (type(v)(v) if isinstance(v, (dict, list)) else v) for k, v in ckpt.items()}
    change(broken)
    path = tmp_path / "broken.pkl"
    torch.save(broken, path)
    with pytest.raises(ModelError, match=message):
        convert_official(path, base, tmp_path / "out", verify=False)
    assert not (tmp_path / "out" / "oscar.json").exists()


class Payload:
    """Unpickling this would create a folder: the weights-only loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_unsafe_or_corrupt_files_are_refused(tmp_path, base, ckpt):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    torch.save({**ckpt, "hyper_encoders": Payload(str(marker))}, path)
    with pytest.raises(ModelError, match="refused by the weights-only loader"):
        load_checkpoint(path)
    assert not marker.exists()

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(garbage)


def test_base_must_be_sd21_v(tmp_path, base, pkl):
    wrong = tmp_path / "base"
    shutil.copytree(base, wrong)
    path = wrong / "scheduler" / "scheduler_config.json"
    path.write_text(path.read_text().replace("v_prediction", "epsilon"))
    with pytest.raises(ModelError, match=r"not Stable Diffusion 2\.1 .*prediction_type"):
        convert_official(pkl, wrong, tmp_path / "out", verify=False)


def test_readme_steps(tmp_path, pkl, base, sample_dir, capsys, monkeypatch):
    """docs/sd21.md's "Stable Diffusion 2.1 and the original checkpoint" commands, as written."""
    import re
    import shlex

    text = (ROOT / "docs" / "sd21.md").read_text().split("<!-- sd21-steps -->", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    shutil.copytree(base, tmp_path / "stable-diffusion-2-1")
    shutil.copy(pkl, tmp_path / "oscar.pkl")
    shutil.copytree(sample_dir, tmp_path / "photos")
    shutil.copy(sorted(sample_dir.glob("*.png"))[1], tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OSCAR_BASE_MODEL", raising=False)
    for line in block.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "oscar"
        assert main(argv[1:]) == 0, (line, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "UNet LoRA      rank 2" in out and "measured bpp" in out
    assert (tmp_path / "photo-decoded.png").is_file()
    # Other dtype, tiles forced: the same file decodes.
    assert (
        main(
            [
                "decompress",
                "photo.oscar",
                "-o",
                "bf16.png",
                "--model",
                "oscar-sd21",
                "--dtype",
                "bfloat16",
                "--tile-size",
                "16",
            ]
        )
        == 0
    )
    # fit-priors changed the fingerprint: the fixed-length file made before is refused by name.
    assert main(["decompress", "photo-fixed.oscar", "-o", "f.png", "--model", "oscar-sd21"]) == 1
    assert "made with model" in capsys.readouterr().err
    # Converting again into the same folder needs --force.
    assert (
        main(
            [
                "convert-official",
                "oscar.pkl",
                "--base-model",
                "stable-diffusion-2-1",
                "-o",
                "oscar-sd21",
            ]
        )
        == 1
    )
    assert load_model("oscar-sd21").priors is not None
