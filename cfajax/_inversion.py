"""Batched latent inversion: the latent a decoder-only generator (a GAN) gives an image from.

For each image `x`, from several starts, minimise

    L(z) = mean (G(z) - x)^2  +  feature_weight * mean (F(G(z)) - F(x))^2
           +  prior_weight * mean z^2

(pixel MSE, an optional feature loss through a given network F, such as the
classifier's own features, and an optional Gaussian prior on z) until the loss
is at most `tolerance`, the gradient vanishes or `max_steps` updates were
taken; keep each start's best latent, and of the starts the best. It runs on
the attack's machinery (`_driver.py`): one latent's state and update,
vmapped; the gradient of the batch's summed loss; continuous or static
scheduling over a device mesh; `Status` codes instead of exceptions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfajax import _array_checks
from cfajax import _checks
from cfajax import _driver
from cfajax._attack import _optimizer_factory
from cfajax._batching import apply_batched
from cfajax._batching import map_batches
from cfajax._callables import as_pure_callable
from cfajax._loop import PRECISIONS
from cfajax._loop import cast_model
from cfajax._loop import make_transformation
from cfajax._status import RUNNING
from cfajax._status import Status
from cfajax._status import advance
from cfajax._status import next_status


class InversionHyper(NamedTuple):
  """Traced options: new values never compile again."""

  tolerance: jax.Array  # () float32: stop when the loss is at most this
  step_size: jax.Array  # () the optimizer's learning rate
  max_steps: jax.Array  # () int32
  grad_tol: jax.Array  # () float32
  feature_weight: jax.Array  # () float32
  prior_weight: jax.Array  # () float32


class InversionState(NamedTuple):
  """One latent's carry. Shapes are for one example."""

  z: jax.Array  # (d,)
  opt_state: Any
  target: Any  # (image (H, W, C), features (k,))
  steps: jax.Array  # () int32
  status: jax.Array  # () int32, RUNNING or a `Status`
  initial_loss: jax.Array  # () float32
  best_loss: jax.Array  # () float32, the lowest loss seen
  best_z: jax.Array  # (d,) the latent that had it


class StartResult(NamedTuple):
  """One start's outcome, as the scheduler writes it out."""

  z: jax.Array  # (d,) its best latent
  loss: jax.Array  # () that latent's loss
  steps: jax.Array
  status: jax.Array
  initial_loss: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class InversionResult:
  """The best latent found for each image; a pytree of arrays.

  Attributes:
    z: (n, d) latents; `decode(z)` reconstructs the images.
    loss: (n,) the inversion loss at `z`.
    pixel_mse: (n,) mean squared error of `decode(z)` against the image.
    steps: (n,) updates taken by the winning start.
    status: (n,) `Status` of the winning start (REACHED: the loss reached
      `tolerance`; MAX_STEPS is the usual end when tolerance is 0).
    start: (n,) which start won (0 is the encoder's latent when one is given).
    start_losses: (n, starts) each start's best loss.
  """

  z: np.ndarray
  loss: np.ndarray
  pixel_mse: np.ndarray
  steps: np.ndarray
  status: np.ndarray
  start: np.ndarray
  start_losses: np.ndarray

  def __len__(self) -> int:
    return self.z.shape[0]


@dataclasses.dataclass(frozen=True)
class InversionProblem:
  """The scheduler's problem (static): models = (decode,) or (decode, features)."""

  optimizer: Any = None  # a factory of a learning rate, or a ready transformation
  precision: str = "float32"

  def cast(self, models):
    return tuple(cast_model(m, self.precision) for m in models)

  def init(self, hyper: InversionHyper, z, target) -> InversionState:
    inf = jnp.array(jnp.inf, jnp.float32)
    return InversionState(
        z=z, opt_state=make_transformation(self.optimizer, hyper.step_size).init(z),
        target=target, steps=jnp.array(0, jnp.int32), status=jnp.array(RUNNING, jnp.int32),
        initial_loss=jnp.array(jnp.nan, jnp.float32), best_loss=inf, best_z=z)

  def _loss(self, models, hyper, z, target):
    """One latent's loss, from its own z (d,) alone."""
    image, features = target
    x = models[0](z[None].astype(self.precision))
    wide = jnp.promote_types(x.dtype, jnp.float32)
    loss = jnp.mean(jnp.square(x[0].astype(wide) - image))
    if len(models) > 1:
      f = models[1](x)[0].astype(wide)
      loss = loss + hyper.feature_weight * jnp.mean(jnp.square(f - features))
    return loss + hyper.prior_weight * jnp.mean(jnp.square(z))

  def step(self, models, hyper: InversionHyper, states: InversionState) -> InversionState:
    per_example = jax.vmap(self._loss, in_axes=(None, None, 0, 0))

    def total(z):
      losses = per_example(models, hyper, z, states.target)
      return jnp.sum(losses), losses

    grad, loss = jax.grad(total, has_aux=True)(states.z)
    return jax.vmap(self._update, in_axes=(None, 0, 0, 0))(hyper, states, loss, grad)

  def _update(self, hyper, state: InversionState, loss, grad) -> InversionState:
    running = state.status == RUNNING
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad))
    grad_norm = jnp.sqrt(jnp.sum(jnp.square(grad)))
    status = next_status(state.status, [
        (~finite, Status.NON_FINITE), (loss <= hyper.tolerance, Status.REACHED),
        (state.steps >= hyper.max_steps, Status.MAX_STEPS),
        (grad_norm <= hyper.grad_tol, Status.ZERO_GRADIENT)])
    loss32 = loss.astype(jnp.float32)
    better = running & finite & (loss32 < state.best_loss)
    tx = make_transformation(self.optimizer, hyper.step_size)
    updates, new_opt_state = tx.update(grad, state.opt_state, state.z)  # minimising
    new_z = state.z + jnp.asarray(updates, state.z.dtype)
    return advance(state, status, z=new_z, opt_state=new_opt_state)._replace(
        initial_loss=jnp.where(running & (state.steps == 0), loss32, state.initial_loss),
        best_loss=jnp.where(better, loss32, state.best_loss),
        best_z=jnp.where(better, state.z, state.best_z))

  def result(self, states: InversionState):
    return StartResult(z=states.best_z, loss=states.best_loss, steps=states.steps,
                       status=states.status, initial_loss=states.initial_loss)


def _check_images(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be float images (n, H, W, C); got {images.dtype} "
                     f"{images.shape}")
  if not np.all(np.isfinite(images)):
    raise ValueError("images must be finite; some hold NaN or inf")
  return images


@jax.jit
def _decode_and_compare(decode, z, images):
  return jnp.mean(jnp.square(decode(z) - images), axis=(1, 2, 3))


def pixel_errors(decode, z, images, batch_size: int = 1024) -> np.ndarray:
  """(n,) mean squared error of `decode(z)` against `images`, batched."""
  pure = as_pure_callable(decode)
  return map_batches(lambda zb, xb: _decode_and_compare(pure, zb, xb),
                     [np.asarray(z), np.asarray(images, np.float32)], batch_size)


def invert(
    decode: Callable,
    images,
    *,
    encode: Callable | None = None,
    latent_dim: int | None = None,
    features: Callable | None = None,
    feature_weight: float = 1.0,
    prior_weight: float = 0.0,
    starts: int = 4,
    init_scale: float = 1.0,
    seed: int = 0,
    optimizer="adam",
    step_size: float = 0.05,
    max_steps: int = 500,
    tolerance: float = 0.0,
    grad_tol: float = 0.0,
    precision: str = "float32",
    batch_size: int = 4096,
    schedule: str = "continuous",
    mesh=None,
    progress=False,
) -> InversionResult:
  """Finds, for each image, a latent from which `decode` reproduces it.

  Every image runs `starts` optimisations at once (the encoder's latent, when
  `encode` is given, then draws from N(0, init_scale^2)); each stops at
  `tolerance`, a vanishing gradient or `max_steps`, keeps its best latent, and
  the image keeps its best start.

  Args:
    decode: latents (B, d) -> images (B, H, W, C), as for the attack.
    images: (n, H, W, C) float images in the decoder's range.
    encode: optional images -> latents (B, d), used as the first start.
    latent_dim: d, needed when no `encode` is given.
    features: optional images -> (B, k) features (e.g. a classifier's
      penultimate layer) for a feature loss weighted by `feature_weight`.
    prior_weight: weight of `mean z^2`, which keeps latents where a GAN's
      prior puts them.
    starts, init_scale, seed: the starts.
    optimizer, step_size: as for `counterfactual_attack` (default Adam with
      learning rate 0.05); traced, so a sweep compiles once.
    max_steps, tolerance, grad_tol: when a start stops.
    precision, batch_size, schedule, mesh, progress: as for
      `counterfactual_attack`.

  Returns:
    An `InversionResult` of length n.

  Raises:
    ValueError: for images or models of the wrong shape, or bad options.
  """
  images = _check_images(images)
  starts = _checks.integer("starts", starts, low=1, high=1024)
  _array_checks.precision(precision, PRECISIONS)
  batch_size, mesh = _driver.check_schedule(schedule, batch_size, mesh)
  hyper = InversionHyper(
      tolerance=jnp.asarray(_checks.number("tolerance", tolerance, low=0.0), jnp.float32),
      step_size=jnp.asarray(_checks.number("step_size", step_size, low=0.0, low_open=True),
                            jnp.float32),
      max_steps=jnp.asarray(_checks.integer("max_steps", max_steps, low=0), jnp.int32),
      grad_tol=jnp.asarray(_checks.number("grad_tol", grad_tol, low=0.0), jnp.float32),
      feature_weight=jnp.asarray(_checks.number("feature_weight", feature_weight, low=0.0),
                                 jnp.float32),
      prior_weight=jnp.asarray(_checks.number("prior_weight", prior_weight, low=0.0),
                               jnp.float32))
  _checks.number("init_scale", init_scale, low=0.0)
  factory = _optimizer_factory(optimizer)
  problem = InversionProblem(optimizer=factory, precision=precision)
  decode = as_pure_callable(decode)
  n = len(images)

  if encode is not None:
    z0 = np.asarray(apply_batched(encode, images), np.float32)
    if z0.ndim != 2 or len(z0) != n:
      raise ValueError(f"encode must map images (n, H, W, C) to latents (n, d); got {z0.shape}")
    latent_dim = z0.shape[1]
  elif latent_dim is None:
    raise ValueError("latent_dim is needed to draw starting latents when no encode is given")
  latent_dim = _checks.integer("latent_dim", latent_dim, low=1)
  probe = jax.eval_shape(decode, jax.ShapeDtypeStruct((2, latent_dim), jnp.float32))
  if getattr(probe, "shape", None) != (2, *images.shape[1:]):
    raise ValueError(f"decode maps latents (B, {latent_dim}) to {getattr(probe, 'shape', probe)} "
                     f"for B=2; the images are (n, {', '.join(map(str, images.shape[1:]))})")

  rng = np.random.default_rng(seed)
  z = rng.normal(scale=init_scale, size=(n, starts, latent_dim)).astype(np.float32)
  if encode is not None:
    z[:, 0] = z0
  models = (decode,)
  target_features = np.zeros((n, 0), np.float32)
  if features is not None:
    features = as_pure_callable(features)
    target_features = np.asarray(apply_batched(features, images), np.float32)
    if target_features.ndim != 2 or len(target_features) != n:
      raise ValueError(f"features must map images to (n, k); got {target_features.shape}")
    models = (decode, features)
  flat_z = z.reshape(n * starts, latent_dim)
  target = (np.repeat(images.astype(np.float32), starts, axis=0),
            np.repeat(target_features, starts, axis=0))
  if n == 0:
    empty = np.zeros((0,), np.float32)
    return InversionResult(z=np.zeros((0, latent_dim), np.float32), loss=empty, pixel_mse=empty,
                           steps=np.zeros((0,), np.int32), status=np.zeros((0,), np.int32),
                           start=np.zeros((0,), np.int32),
                           start_losses=np.zeros((0, starts), np.float32))

  out = _driver.solve(problem, models, flat_z, target, hyper, schedule=schedule,
                      batch_size=batch_size, mesh=mesh, progress=progress,
                      label=("inversion", "start")).result
  losses = np.asarray(out.loss).reshape(n, starts)
  ranked = np.where(np.isfinite(losses), losses, np.inf)
  best = np.argmin(ranked, axis=1)
  pick = lambda a: np.asarray(a).reshape(n, starts, *np.shape(a)[1:])[np.arange(n), best]
  z_best = pick(out.z)
  return InversionResult(
      z=z_best, loss=pick(out.loss), pixel_mse=pixel_errors(decode, z_best, images),
      steps=pick(out.steps), status=pick(out.status), start=best.astype(np.int32),
      start_losses=losses)
