"""The one-step x0 estimate against diffusers, for all three prediction types."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import DDIMScheduler

from oscar.models.schedule import NoiseSchedule, epsilon_estimate, x0_estimate

SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("timestep", [1, 150, 500, 999])
def test_x0_matches_diffusers(prediction_type, timestep):
    config = {**SD_SCHEDULE, "prediction_type": prediction_type}
    reference = DDIMScheduler(**config)
    reference.set_timesteps(1000)
    schedule = NoiseSchedule.from_config(config)
    g = torch.Generator().manual_seed(timestep)
    z_t = torch.randn(2, 4, 8, 8, generator=g)
    model_output = torch.randn(2, 4, 8, 8, generator=g)
    expected = reference.step(model_output, timestep, z_t).pred_original_sample
    ours = x0_estimate(model_output, z_t, schedule.alpha_bar(timestep), prediction_type)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_original_release_alpha_bars():
    """docs/official-checkpoint.md §5: ᾱ_t of the SD 2.1 schedule at the original timesteps."""
    schedule = NoiseSchedule.from_config({**SD_SCHEDULE, "prediction_type": "v_prediction"})
    assert schedule.alpha_bar(500) == pytest.approx(0.27633247, abs=1e-7)
    assert schedule.alpha_bar(150) == pytest.approx(0.82781136, abs=1e-7)
    assert schedule.prediction_type == "v_prediction"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_epsilon_and_x0_are_consistent(prediction_type):
    """With the true target, x0 and ε estimates invert z_t = √ᾱ·y + √(1−ᾱ)·ε."""
    schedule = NoiseSchedule.from_config({**SD_SCHEDULE, "prediction_type": prediction_type})
    g = torch.Generator().manual_seed(0)
    y, noise = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    t = torch.tensor([321])
    z_t = schedule.add_noise(y, noise, t)
    target = schedule.training_target(y, noise, t)
    ab = schedule.alpha_bar(321)
    torch.testing.assert_close(
        x0_estimate(target, z_t, ab, prediction_type), y, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        epsilon_estimate(target, z_t, ab, prediction_type), noise, atol=1e-4, rtol=1e-4
    )


def test_timestep_for_cosine():
    schedule = NoiseSchedule.from_config({**SD_SCHEDULE, "prediction_type": "epsilon"})
    for t in (0, 150, 500, 900):
        c = schedule.alpha_bar(t) ** 0.5
        assert schedule.timestep_for_cosine(c) == t


def test_ddim_timesteps():
    from oscar.models.schedule import ddim_timesteps

    assert ddim_timesteps(150, 1) == (150,)
    assert ddim_timesteps(150, 4) == (150, 113, 75, 38)
    assert ddim_timesteps(0, 1) == (0,)
    for start, steps in [(150, 20), (500, 7), (150, 150), (3, 2)]:
        ts = ddim_timesteps(start, steps)
        assert len(ts) == steps and ts[0] == start and ts[-1] >= 1
        assert all(a > b for a, b in itertools.pairwise(ts))
    for bad in [(150, 0), (150, 151), (0, 2)]:
        with pytest.raises(ValueError):
            ddim_timesteps(*bad)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_matches_diffusers(prediction_type):
    """One η = 0 DDIM update from t = 300 to 200 equals diffusers' DDIMScheduler.step."""
    from oscar.models.schedule import ddim_step

    config = {**SD_SCHEDULE, "prediction_type": prediction_type}
    reference = DDIMScheduler(**config)
    reference.set_timesteps(10)  # leading spacing: ..., 300, 200, ...
    schedule = NoiseSchedule.from_config(config)
    g = torch.Generator().manual_seed(1)
    z_t, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    expected = reference.step(out, 300, z_t, eta=0.0).prev_sample
    ab = schedule.alpha_bar(300)
    y_hat = x0_estimate(out, z_t, ab, prediction_type)
    eps = epsilon_estimate(out, z_t, ab, prediction_type)
    ours = ddim_step(y_hat, eps, schedule.alpha_bar(200))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
