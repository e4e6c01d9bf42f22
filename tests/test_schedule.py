"""The one-step x0 estimate against diffusers, for all three prediction types."""

from __future__ import annotations

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
    """official-checkpoint.md §5: ᾱ_t of the SD 2.1 schedule at the original timesteps."""
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
