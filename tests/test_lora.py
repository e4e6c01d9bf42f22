"""UNet LoRA: target modules (SD 2.1, Appendix A), merge formulas vs peft, storage round trip."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from helpers import CONFIGS, ROOT
from helpers.tiny_sd import ADAPTERS, original_lora_lists, single_thread  # noqa: F401 (fixture)
from oscar.config import LoraSettings, ModelConfig
from oscar.errors import ModelError
from oscar.models.lora import (
    LORA_PREFIX,
    OVERRIDE_PREFIX,
    UnetAdapter,
    add_lora,
    base_state_dict,
    expected_lora_shapes,
    identity_adapter,
    load_lora_into_peft,
    lora_state_dict,
    lora_target_names,
    merge_adapter,
    merge_lora,
)

APPENDIX_A = json.loads((ROOT / "tests" / "data" / "sd21_lora_modules.json").read_text())

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sd21_config() -> ModelConfig:
    return ModelConfig.from_json_file(CONFIGS / "sd21.json")


@pytest.fixture(scope="module")
def sd21_unet_meta(sd21_config):
    """The full SD 2.1 UNet on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(sd21_config.unet)


def test_sd21_targets_are_the_258_modules_of_appendix_a(sd21_config, sd21_unet_meta):
    names = lora_target_names(sd21_unet_meta, sd21_config.lora)
    assert len(names) == len(set(names)) == 258
    listed = [row[0] for a in ADAPTERS for row in APPENDIX_A[a]]
    assert set(names) == set(listed)
    # The three lists are the original rule's partition, in checkpoint order.
    expected = {a: [r[0] for r in APPENDIX_A[a]] for a in ADAPTERS}
    assert original_lora_lists(sd21_unet_meta) == expected
    kinds = [type(sd21_unet_meta.get_submodule(n)).__name__ for n in names]
    assert kinds.count("Linear") == 192 and kinds.count("Conv2d") == 66
    shapes = expected_lora_shapes(sd21_unet_meta, sd21_config.lora)
    for adapter in ADAPTERS:
        for name, base, a, b in APPENDIX_A[adapter]:
            assert list(sd21_unet_meta.get_submodule(name).weight.shape) == base
            assert list(shapes[f"{LORA_PREFIX}{name}.lora_A.weight"]) == a
            assert list(shapes[f"{LORA_PREFIX}{name}.lora_B.weight"]) == b
    # docs/official-checkpoint.md §3.1: 16,222,848 LoRA parameters in all
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 16_222_848


def test_peft_wraps_exactly_the_targets(sd21_config, sd21_unet_meta):
    import copy

    unet = copy.deepcopy(sd21_unet_meta)
    names = add_lora(unet, sd21_config.lora)
    assert len(names) == 258
    # peft's own names (the original's keys, §3.2): <module>.lora_{A,B}.<adapter>.weight
    peft_keys = {n for n, _ in unet.named_parameters() if ".lora_" in n}
    assert len(peft_keys) == 516
    ours = {
        k.replace("unet_lora.", "").replace(".weight", ".default.weight")
        for k in expected_lora_shapes(sd21_unet_meta, sd21_config.lora)
    }
    assert peft_keys == ours


# ----------------------------------------------------------------------------- tiny UNet
@pytest.fixture()
def tiny_unet(tiny_config):
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(tiny_config.unet).eval()


def settings_like_original() -> LoraSettings:
    sd21 = ModelConfig.from_json_file(CONFIGS / "sd21.json").lora
    return LoraSettings(rank=3, alpha=5.0, target_modules=sd21.target_modules)


def unet_inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 16, 16, generator=g),
        torch.tensor([500, 150]),
        torch.randn(2, 3, 8, generator=g),
    )


def randomise_lora(unet, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_merge_equals_unmerged_peft_forward(tiny_unet):
    settings = settings_like_original()
    base = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    z, t, ctx = unet_inputs()
    with torch.no_grad():
        plain = tiny_unet(z, t, encoder_hidden_states=ctx).sample
    add_lora(tiny_unet, settings, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # B = 0 at init: the UNet is unchanged
        torch.testing.assert_close(tiny_unet(z, t, encoder_hidden_states=ctx).sample, plain)
    randomise_lora(tiny_unet)
    with torch.no_grad():
        unmerged = tiny_unet(z, t, encoder_hidden_states=ctx).sample
    assert (unmerged - plain).abs().max() > 1e-3  # the LoRA does something
    state = lora_state_dict(tiny_unet)
    assert base_state_dict(tiny_unet).keys() == base.keys()

    fresh = UNet2DConditionModel.from_config(tiny_unet.config).eval()
    fresh.load_state_dict(base)
    adapter = merge_lora(fresh, state, settings)
    assert adapter.merged
    with torch.no_grad():
        merged = fresh(z, t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match="already merged"):
        merge_adapter(fresh, adapter)


def test_merge_formulas_on_single_layers():
    """docs/official-checkpoint.md §3.2, written out: Linear W + s·BA;
    Conv W + s·Σ_r B[o,r]A[r,i]."""
    g = torch.Generator().manual_seed(0)
    s = 0.5
    lin, conv = nn.Linear(6, 5), nn.Conv2d(4, 3, 3, stride=2, padding=1)
    a_l, b_l = torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g)
    a_c, b_c = torch.randn(2, 4, 3, 3, generator=g), torch.randn(3, 2, 1, 1, generator=g)
    x_l, x_c = torch.randn(7, 6, generator=g), torch.randn(1, 4, 9, 9, generator=g)
    with torch.no_grad():
        want_l = lin(x_l) + s * (x_l @ a_l.t() @ b_l.t())
        lora_a = nn.functional.conv2d(x_c, a_c, stride=2, padding=1)
        want_c = conv(x_c) + s * nn.functional.conv2d(lora_a, b_c)
    holder = nn.Module()
    holder.proj_in, holder.conv = lin, conv
    settings = LoraSettings(rank=2, alpha=1.0, target_modules=("proj_in", "conv"))
    merge_lora(
        holder,
        {
            f"{LORA_PREFIX}proj_in.lora_A.weight": a_l,
            f"{LORA_PREFIX}proj_in.lora_B.weight": b_l,
            f"{LORA_PREFIX}conv.lora_A.weight": a_c,
            f"{LORA_PREFIX}conv.lora_B.weight": b_c,
        },
        settings,
    )
    with torch.no_grad():
        torch.testing.assert_close(lin(x_l), want_l)
        torch.testing.assert_close(conv(x_c), want_c)


def test_peft_round_trip_and_overrides(tiny_unet):
    settings = settings_like_original()
    add_lora(tiny_unet, settings, generator=torch.Generator().manual_seed(0))
    randomise_lora(tiny_unet, seed=5)
    state = lora_state_dict(tiny_unet)
    # every wrapped module carries exactly one adapter
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state)
    other = UNet2DConditionModel.from_config(tiny_unet.config)
    add_lora(other, settings, generator=torch.Generator().manual_seed(9))
    new_conv_in = torch.full_like(other.conv_in.base_layer.weight, 0.25)
    load_lora_into_peft(other, {**state, OVERRIDE_PREFIX + "conv_in.weight": new_conv_in})
    again = lora_state_dict(other)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert torch.equal(other.conv_in.base_layer.weight, new_conv_in)
    with pytest.raises(ModelError, match="missing"):
        load_lora_into_peft(other, dict(list(state.items())[1:]))


def test_add_lora_is_seeded_and_trains_only_lora(tiny_unet):
    settings = settings_like_original()
    first = UNet2DConditionModel.from_config(tiny_unet.config)
    add_lora(first, settings, generator=torch.Generator().manual_seed(3))
    add_lora(tiny_unet, settings, generator=torch.Generator().manual_seed(3))
    a, b = lora_state_dict(first), lora_state_dict(tiny_unet)
    assert all(torch.equal(a[k], b[k]) for k in a)
    big = torch.cat([v.flatten() for k, v in a.items() if ".lora_A." in k])
    assert abs(float(big.std()) - 1 / settings.rank) < 0.05  # peft's "gaussian": N(0, 1/r²)
    assert all(float(v.abs().max()) == 0 for k, v in a.items() if ".lora_B." in k)
    trainable = {n for n, p in tiny_unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def test_mismatched_lora_is_refused(tiny_unet):
    settings = settings_like_original()
    adapter = identity_adapter(tiny_unet, settings, torch.Generator().manual_seed(0))
    key = next(k for k in adapter.tensors if k.endswith("lora_A.weight"))
    broken = dict(adapter.tensors)
    broken[key] = torch.zeros(7, 7)
    with pytest.raises(ModelError, match="wrong shape"):
        merge_adapter(tiny_unet, UnetAdapter(settings, broken))
    broken = dict(adapter.tensors)
    broken.pop(key)
    broken[LORA_PREFIX + "nowhere.lora_A.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"missing: .*unexpected: unet_lora\.nowhere"):
        merge_adapter(tiny_unet, UnetAdapter(settings, broken))
    with pytest.raises(ModelError, match="no UNet module matches"):
        lora_target_names(tiny_unet, LoraSettings(2, 2.0, ("no_such_module",)))
