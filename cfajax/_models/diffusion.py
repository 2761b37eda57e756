"""A diffusion model as the attack's generator: DDIM inversion to an edit depth, and DDIM
sampling back, differentiable and rematerialised step by step.

The latent of an image x is its noisy state x_t at the edit depth: `encode`
runs K deterministic DDIM inversion steps from x, `decode` runs the K DDIM
steps from x_t back to an image, where the chain of `steps` DDIM steps over
all `num_train_timesteps` is cut at `depth` (K = round(depth * steps), at
least 1). The attack's gradient flows through every step of `decode`; with
`remat` each step is rematerialised (`jax.checkpoint` in a `lax.scan`), so
memory holds one step's activations and K states, not K steps' activations.

`NoiseSchedule` holds diffusers' `DDIMScheduler` options; `ddim_step` and
`ddim_inverse_step` are its and `DDIMInverseScheduler`'s updates, checked
against them in tests/diffusers_test.py. `DiffusionConfig` (the UNet's config,
the schedule, and the edit's steps and depth) rebuilds a generator from a
checkpoint, as the other families' configs do.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfajax._models._base import _Config
from cfajax._models.unet import UNet
from cfajax._models.unet import UNetConfig

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclasses.dataclass(frozen=True)
class NoiseSchedule(_Config):
  """DDPM's noise schedule with DDIM's options, as diffusers' `DDIMScheduler` names them.

  Attributes:
    num_train_timesteps: the length T of the training chain.
    beta_start, beta_end, beta_schedule: the betas ("linear", "scaled_linear",
      or "squaredcos_cap_v2", the cosine schedule).
    clip_sample, clip_sample_range: clip each predicted x0 to +-range.
    set_alpha_to_one: alpha-bar beyond the chain's ends is 1 (else alpha-bar_0).
    steps_offset: added to every DDIM timestep ("leading" spacing).
    prediction_type: what the network predicts: "epsilon", "sample" or
      "v_prediction".
  """

  num_train_timesteps: int = 1000
  beta_start: float = 0.0001
  beta_end: float = 0.02
  beta_schedule: str = "linear"
  clip_sample: bool = True
  clip_sample_range: float = 1.0
  set_alpha_to_one: bool = True
  steps_offset: int = 0
  prediction_type: str = "epsilon"

  def __post_init__(self):
    if self.beta_schedule not in BETA_SCHEDULES:
      raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}; got "
                       f"{self.beta_schedule!r}")
    if self.prediction_type not in PREDICTION_TYPES:
      raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}; got "
                       f"{self.prediction_type!r}")
    if self.num_train_timesteps < 2:
      raise ValueError(f"num_train_timesteps must be >= 2; got {self.num_train_timesteps}")

  def betas(self) -> np.ndarray:
    """(T,) float32, computed as diffusers computes them."""
    t = self.num_train_timesteps
    if self.beta_schedule == "linear":
      return np.linspace(self.beta_start, self.beta_end, t, dtype=np.float32)
    if self.beta_schedule == "scaled_linear":
      return np.linspace(self.beta_start**0.5, self.beta_end**0.5, t, dtype=np.float32) ** 2
    alpha_bar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / t) / alpha_bar(i / t), 0.999)
                     for i in range(t)], np.float32)

  def alphas_cumprod(self) -> np.ndarray:
    """(T,) float32 alpha-bar_t."""
    return np.cumprod(1.0 - self.betas(), dtype=np.float32)

  def timesteps(self, steps: int) -> np.ndarray:
    """The `steps` DDIM timesteps, ascending ("leading" spacing)."""
    ratio = self.num_train_timesteps // steps
    return (np.arange(steps) * ratio).astype(np.int64) + self.steps_offset


def _predictions(schedule: NoiseSchedule, model_output, sample, alpha):
  """(predicted x0, predicted noise) from the network's output at alpha-bar `alpha`."""
  beta = 1 - alpha
  if schedule.prediction_type == "epsilon":
    x0, eps = (sample - jnp.sqrt(beta) * model_output) / jnp.sqrt(alpha), model_output
  elif schedule.prediction_type == "sample":
    x0 = model_output
    eps = (sample - jnp.sqrt(alpha) * x0) / jnp.sqrt(beta)
  else:
    x0 = jnp.sqrt(alpha) * sample - jnp.sqrt(beta) * model_output
    eps = jnp.sqrt(alpha) * model_output + jnp.sqrt(beta) * sample
  if schedule.clip_sample:
    x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
  return x0, eps


def alphas_like(schedule: NoiseSchedule, sample) -> jax.Array:
  """alpha-bar (T,) as the sample's float type (float32 at least): the float32 schedule,
  whose updates are then computed in float64 for a float64 sample.

  The table enters the program as its float32 bits (uint32): it is the schedule, not a
  weight, and a model run in bfloat16 keeps it exact (the attack's check for wider
  floating-point constants, which a cast to bfloat16 cannot reach, rightly passes it)."""
  bits = schedule.alphas_cumprod().view(np.uint32)
  alphas = jax.lax.bitcast_convert_type(jnp.asarray(bits), jnp.float32)
  return alphas.astype(jnp.promote_types(sample.dtype, jnp.float32))


def _alpha(schedule: NoiseSchedule, alphas, t, edge):
  """alpha-bar at timestep `t` (traced int), `edge` where t < 0."""
  return jnp.where(t >= 0, alphas[jnp.clip(t, 0, schedule.num_train_timesteps - 1)], edge)


def ddim_step(schedule: NoiseSchedule, model_output, t, sample, steps: int):
  """One deterministic DDIM step from timestep t to t - T // steps (diffusers'
  `DDIMScheduler.step`, eta 0): the sample one step less noisy."""
  alphas = alphas_like(schedule, sample)
  edge = 1.0 if schedule.set_alpha_to_one else alphas[0]
  alpha = alphas[t]
  alpha_prev = _alpha(schedule, alphas, t - schedule.num_train_timesteps // steps, edge)
  x0, eps = _predictions(schedule, model_output, sample, alpha)
  return jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1 - alpha_prev) * eps


def ddim_inverse_step(schedule: NoiseSchedule, model_output, t, sample, steps: int):
  """One DDIM inversion step to timestep t from t - T // steps (diffusers'
  `DDIMInverseScheduler.step`; `model_output` is the network's at label t)."""
  alphas = alphas_like(schedule, sample)
  edge = 1.0 if schedule.set_alpha_to_one else alphas[0]
  source = jnp.minimum(t - schedule.num_train_timesteps // steps,
                       schedule.num_train_timesteps - 1)
  alpha = _alpha(schedule, alphas, source, edge)
  alpha_next = alphas[t]
  x0, eps = _predictions(schedule, model_output, sample, alpha)
  return jnp.sqrt(alpha_next) * x0 + jnp.sqrt(1 - alpha_next) * eps


def check_edit(schedule: NoiseSchedule, steps, depth) -> None:
  """Checks a generator's edit options against its schedule, naming the one at fault."""
  if not (isinstance(steps, int) and not isinstance(steps, bool)
          and 1 <= steps <= schedule.num_train_timesteps):
    raise ValueError(f"steps must be an integer in [1, {schedule.num_train_timesteps}] (the "
                     f"DDIM steps over the whole chain); got {steps!r}")
  if not (isinstance(depth, (int, float)) and not isinstance(depth, bool) and 0 < depth <= 1):
    raise ValueError(f"depth must be in (0, 1] (the fraction of the chain edited); got "
                     f"{depth!r}")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(_Config):
  """A diffusion generator's architecture, noise schedule and edit.

  Attributes:
    unet: the noise predictor's `UNetConfig`.
    schedule: the `NoiseSchedule` it was trained with.
    steps: DDIM steps over the whole chain.
    depth: the fraction of the chain edited, in (0, 1].
  """

  unet: UNetConfig = UNetConfig()
  schedule: NoiseSchedule = NoiseSchedule()
  steps: int = 20
  depth: float = 0.5

  def __post_init__(self):
    for name, kind in (("unet", UNetConfig), ("schedule", NoiseSchedule)):
      value = getattr(self, name)
      if isinstance(value, dict):
        object.__setattr__(self, name, kind.from_dict(value))
      elif not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}; got {type(value).__name__}")
    check_edit(self.schedule, self.steps, self.depth)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.unet.image_shape

  @property
  def latent_dim(self) -> int:
    return math.prod(self.unet.image_shape)

  def to_dict(self) -> dict:
    return {"unet": self.unet.to_dict(), "schedule": self.schedule.to_dict(),
            "steps": self.steps, "depth": self.depth}


def build_diffusion(config: DiffusionConfig, *, rngs: nnx.Rngs) -> DiffusionGenerator:
  """A `DiffusionGenerator` with a fresh UNet, from its config."""
  return DiffusionGenerator(UNet(config.unet, rngs=rngs), config.schedule, steps=config.steps,
                            depth=config.depth)


class DiffusionGenerator(nnx.Module):
  """A diffusion model as a generator: latents are noisy images at an edit depth.

  Attributes:
    unet: the noise predictor, images in [-1, 1].
    schedule: its noise schedule.
    steps: DDIM steps over the whole chain.
    depth: the fraction of the chain edited, in (0, 1]: K = round(depth *
      steps) steps each way (at least 1).
    remat: rematerialise each decoding step in the gradient.

  `encode`: images (B, H, W, C) in [0, 1] -> latents (B, H*W*C).
  `decode`: latents -> images in [0, 1] (with `clip_sample`).
  """

  def __init__(self, unet: UNet, schedule: NoiseSchedule, *, steps: int = 20,
               depth: float = 0.5, remat: bool = True):
    check_edit(schedule, steps, depth)
    self.unet = unet
    self.schedule = schedule
    self.steps = steps
    self.depth = float(depth)
    self.remat = remat
    self.image_shape = unet.config.image_shape

  @property
  def config(self) -> DiffusionConfig:
    """What rebuilds this generator: the UNet's config, the schedule, steps and depth."""
    return DiffusionConfig(self.unet.config, self.schedule, self.steps, self.depth)

  @property
  def latent_dim(self) -> int:
    """H * W * C: a latent is a noisy image."""
    return math.prod(self.image_shape)

  def with_edit(self, *, steps: int | None = None, depth: float | None = None,
                remat: bool | None = None) -> DiffusionGenerator:
    """This model with other edit options (None keeps this one's); the UNet is shared."""
    return DiffusionGenerator(
        self.unet, self.schedule, steps=self.steps if steps is None else steps,
        depth=self.depth if depth is None else depth,
        remat=self.remat if remat is None else remat)

  @property
  def edit_steps(self) -> int:
    """K, the DDIM steps each way."""
    return max(1, round(self.depth * self.steps))

  def edit_timesteps(self) -> np.ndarray:
    """The K timesteps of the edited part of the chain, ascending."""
    return self.schedule.timesteps(self.steps)[:self.edit_steps]

  def _run(self, x: jax.Array, timesteps: np.ndarray, update) -> jax.Array:
    graphdef, state = nnx.split(self.unet)

    def step(sample, t):
      eps = nnx.merge(graphdef, state)(sample, jnp.full((sample.shape[0],), t))
      # The schedule's float32 would promote a bfloat16 sample: the carry keeps its type.
      return update(self.schedule, eps, t, sample, self.steps).astype(sample.dtype), None

    if self.remat:
      step = jax.checkpoint(step)
    out, _ = jax.lax.scan(step, x, jnp.asarray(timesteps, jnp.int32))
    return out

  def encode(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) in [0, 1] -> their noisy states at the depth, (B, H*W*C)."""
    x = jnp.asarray(x)
    if tuple(x.shape[1:]) != self.image_shape:
      raise ValueError(f"this diffusion model was built for images of shape "
                       f"{self.image_shape}; got images of shape {tuple(x.shape[1:])}")
    noisy = self._run(2 * x - 1, self.edit_timesteps(), ddim_inverse_step)
    return noisy.reshape(x.shape[0], -1)

  def decode(self, z: jax.Array) -> jax.Array:
    """Noisy states (B, H*W*C) at the depth -> images (B, H, W, C)."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != math.prod(self.image_shape):
      raise ValueError(f"latents of this diffusion model are noisy images flattened to (B, "
                       f"{math.prod(self.image_shape)}); got shape {tuple(z.shape)}")
    sample = z.reshape(z.shape[0], *self.image_shape)
    return (self._run(sample, self.edit_timesteps()[::-1], ddim_step) + 1) / 2
