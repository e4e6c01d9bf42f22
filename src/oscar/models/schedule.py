"""Noise schedule, the one-step x0 estimate and multi-step DDIM (docs/method.md §1, §4).

The schedule is read from a diffusers scheduler config (beta schedule, number of steps,
``prediction_type``); diffusers computes ᾱ_t, we only read it. The x0 formula is written out
instead of calling ``scheduler.step``, whose previous-timestep lookup fails for a lone t in
recent diffusers (docs/official-checkpoint.md §5).

Multi-step decoding (``oscar decompress --steps N``) walks from the level's pseudo-timestep t_L
down to 0 with N deterministic DDIM steps (η = 0: no noise is drawn). The UNet is evaluated at
``ddim_timesteps(t_L, N)``, N timesteps evenly spaced in t (the "trailing" spacing of diffusers,
anchored at t_L instead of T − 1)::

    τ_k = round(t_L · (N − k) / N),  k = 0 … N − 1        e.g. t_L = 150, N = 4: 150, 113, 75, 38

and the last step returns its x0 estimate (the jump to ᾱ = 1). With N = 1 this is exactly the
one-step decoder. Even spacing in t keeps the first step at t_L, where the decoded latent lives,
and spends the steps where ᾱ changes, as the DDIM paper's linear spacing does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler

PredictionType = Literal["epsilon", "v_prediction", "sample"]


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t in [0, T) (float32, as diffusers computes it) and the UNet's prediction type."""

    alphas_cumprod: torch.Tensor
    prediction_type: PredictionType

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        scheduler = DDPMScheduler.from_config(config)
        return cls(
            alphas_cumprod=scheduler.alphas_cumprod.to(torch.float32).clone(),
            prediction_type=scheduler.config.prediction_type,
        )

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def alpha_bar(self, timestep: int) -> float:
        if not 0 <= timestep < self.num_train_timesteps:
            raise ValueError(f"timestep {timestep} outside [0, {self.num_train_timesteps})")
        return float(self.alphas_cumprod[timestep])

    def timestep_for_cosine(self, cosine: float) -> int:
        """t = argmin_t |√ᾱ_t − c| (docs/method.md §4): the noise level whose expected cosine
        is c."""
        sqrt_ab = self.alphas_cumprod.double().sqrt()
        return int((sqrt_ab - float(cosine)).abs().argmin())

    def add_noise(self, y: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t = √ᾱ_t·y + √(1−ᾱ_t)·ε for per-sample timesteps t (B,)."""
        ab = self.alphas_cumprod.to(y.device)[t].to(y.dtype).view(-1, 1, 1, 1)
        return ab.sqrt() * y + (1 - ab).sqrt() * noise

    def training_target(
        self, y: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """What the UNet is trained to output for this prediction type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return y
        ab = self.alphas_cumprod.to(y.device)[t].to(y.dtype).view(-1, 1, 1, 1)
        return ab.sqrt() * noise - (1 - ab).sqrt() * y


def x0_estimate(
    model_output: torch.Tensor,
    z_t: torch.Tensor,
    alpha_bar: float | torch.Tensor,
    prediction_type: PredictionType,
) -> torch.Tensor:
    """One-step estimate of the clean latent from the UNet output at ᾱ_t.

    - epsilon:       y_hat = (z_t − √(1−ᾱ)·ε̂) / √ᾱ
    - v_prediction:  y_hat = √ᾱ·z_t − √(1−ᾱ)·v̂
    - sample:        y_hat = model output
    """
    if prediction_type == "sample":
        return model_output
    ab = torch.as_tensor(alpha_bar, dtype=torch.float32, device=z_t.device)
    if ab.ndim == 1:
        ab = ab.view(-1, 1, 1, 1)
    sqrt_ab, sqrt_one_minus = ab.sqrt().to(z_t.dtype), (1 - ab).sqrt().to(z_t.dtype)
    if prediction_type == "epsilon":
        return (z_t - sqrt_one_minus * model_output) / sqrt_ab
    if prediction_type == "v_prediction":
        return sqrt_ab * z_t - sqrt_one_minus * model_output
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def epsilon_estimate(
    model_output: torch.Tensor,
    z_t: torch.Tensor,
    alpha_bar: float | torch.Tensor,
    prediction_type: PredictionType,
) -> torch.Tensor:
    """The noise ε̂ implied by the UNet output (used by multi-step DDIM decoding)."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float32, device=z_t.device)
    sqrt_ab, sqrt_one_minus = ab.sqrt().to(z_t.dtype), (1 - ab).sqrt().to(z_t.dtype)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return sqrt_one_minus * z_t + sqrt_ab * model_output
    if prediction_type == "sample":
        return (z_t - sqrt_ab * model_output) / sqrt_one_minus.clamp_min(1e-8)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def ddim_timesteps(start: int, steps: int) -> tuple[int, ...]:
    """The N = ``steps`` timesteps of a DDIM walk from ``start`` (= t_L) down to 0, descending.

    τ_k = round(start · (N − k) / N) for k = 0 … N − 1 (halves round up), so τ_0 = start and
    the values are distinct; N may be at most ``max(start, 1)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps > max(start, 1):
        raise ValueError(f"at most {max(start, 1)} steps from timestep {start}, got {steps}")
    return tuple((2 * start * (steps - k) + steps) // (2 * steps) for k in range(steps))


def ddim_step(
    y_hat: torch.Tensor, epsilon: torch.Tensor, alpha_bar_next: float | torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM update (η = 0): z_next = √ᾱ_next·ŷ + √(1−ᾱ_next)·ε̂."""
    ab = torch.as_tensor(alpha_bar_next, dtype=torch.float32, device=y_hat.device)
    return ab.sqrt().to(y_hat.dtype) * y_hat + (1 - ab).sqrt().to(y_hat.dtype) * epsilon
