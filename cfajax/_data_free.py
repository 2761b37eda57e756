"""Counterfactuals from the classifier alone: deep inversion toward a target (DISC).

No generator and no training data: for each query image `x` and target `t`,
an image `x'` is optimised directly, through an image prior, until the
classifier gives `t` the `threshold` probability. Per example it minimises

    L(x') = -objective(f(x'), t)                          the attack's objective
            + tv_weight         * TV(x')                  mean |horizontal and vertical differences|
            + l2_weight         * mean x'^2               (deep inversion's image priors)
            + proximity_weight  * mean |x' - x|           stay near the query
            + statistics_weight * mean (s(x') - s*)^2     feature statistics (DeepInversion)
            + manifold_weight   * -log K_t(x')            manifold consistency (DISC)

over the parameters of an image prior:

* `"pixels"`: the pixels themselves (image space optimisation, as in plain
  deep inversion), started at the query;
* `"implicit"`: an implicit neural representation of the change, one small
  coordinate MLP per example on NeRF-style Fourier features of the pixel
  coordinates, `x' = clip(x + mlp(gamma(p)))`, its last layer zero at the
  start so that `x'` starts at the query. The network can express only
  changes that are smooth at the scale of its frequencies, a stronger prior
  than free pixels.

Either prior's image is clipped to [0, 1] with a straight-through gradient
(`clip_through`), so that a pixel pushed out of range can come back. The
priors are values (`_priors.py`) that the problem below holds.

`progressive=True` optimises coarse to fine in `stages` stages of
`stage_steps` updates: for pixels, a pyramid of changes at 1/2^k of the
resolution (bilinearly upsampled) is unlocked from the coarsest level
down, each level with an optimizer of its own; for the implicit prior,
the Fourier bands are grouped and each group is faded in linearly over one
stage (as coarse-to-fine positional encoding does for neural fields).

Where the terms come from. DISC (Thiagarajan et al., NeurIPS 2021, "Designing
Counterfactual Generators using Deep Model Inversion") improves plain deep
inversion (pixel optimisation with total-variation and l2 priors, plus
DeepInversion's matching of feature statistics to a network's normalisation
layers) with (a) stronger image priors (deep image prior, implicit neural
representations), (b) a manifold-consistency objective and (c) progressive
optimisation. Its supplement trains the manifold-consistency models with the
code of Deterministic Uncertainty Quantification (van Amersfoort et al., ICML
2020); cfajax's term is DUQ's: the negative log RBF certainty of the target
class, `-log K_t(x') = mean_j (W_t f(x') - e_t)_j^2 / (2 sigma^2)`, the
scaled squared distance of the counterfactual's embedding to the centroid of
the target class's training data (`cfajax.DUQ`, trained once with
`train_duq`; at attack time only the trained model is needed). Any callable
giving (B, K) log-certainties may take its place. The paper's equations and
weights could not be consulted here, so the weights' defaults are cfajax's,
tuned on MNIST training digits (experiments/RESULTS.md, "Counterfactuals
without a generator").

It runs on the attack's machinery (`_driver.py`): one example's state and
update, vmapped; the gradient of the batch's summed loss, in which each row
depends on its own parameters alone; continuous or static scheduling over a
device mesh; `Status` codes instead of exceptions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import overload

import jax
import jax.numpy as jnp
import numpy as np

from cfajax import _array_checks
from cfajax import _checks
from cfajax import _driver
from cfajax._attack import _optimizer_factory
from cfajax._attack import check_targets
from cfajax._callables import as_pure_callable
from cfajax._choices import OBJECTIVES
from cfajax._choices import PRIORS
from cfajax._loop import PRECISIONS
from cfajax._loop import Outcome
from cfajax._loop import cast_model
from cfajax._loop import make_transformation
from cfajax._loop import target_scores
from cfajax._priors import ImplicitPrior
from cfajax._priors import PixelPrior
from cfajax._priors import Prior
from cfajax._priors import default_frequencies
from cfajax._sources import output_width
from cfajax._status import RUNNING
from cfajax._status import Status
from cfajax._status import next_status

# Adam learning rates per prior, tuned with the weights (RESULTS.md).
DEFAULT_STEP_SIZES = {"pixels": 0.01, "implicit": 0.001}


class DataFreeHyper(NamedTuple):
  """Traced options: new values never compile again."""

  threshold: jax.Array  # () float32
  step_size: jax.Array  # () the images' dtype
  max_steps: jax.Array  # () int32
  grad_tol: jax.Array  # () float32
  stage_steps: jax.Array  # () int32, updates per progressive stage
  tv_weight: jax.Array
  l2_weight: jax.Array
  proximity_weight: jax.Array
  statistics_weight: jax.Array
  manifold_weight: jax.Array
  statistics_reference: jax.Array  # (k,) float32; (0,) without a statistics model


class DataFreeState(NamedTuple):
  """One example's carry. Shapes are for one example."""

  params: Any  # the image prior's parameters
  opt_state: Any
  query: jax.Array  # (H, W, C)
  target: jax.Array  # () int32
  image: jax.Array  # (H, W, C) the image at the last check
  steps: jax.Array  # () int32
  status: jax.Array  # () int32, RUNNING or a `Status`
  initial_prob: jax.Array  # () float32
  final_prob: jax.Array  # () float32


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DataFreeResult(Outcome):
  """Counterfactual images and why each stopped; a pytree of arrays.

  Attributes:
    images: (n, H, W, C) the counterfactuals (the image at the last check).
    target: (n,) int32 target of each query.
    steps: (n,) int32 updates taken (0 if the target held at once).
    status: (n,) int32 `Status` codes.
    initial_prob: (n,) float32 target probability of the query.
    final_prob: (n,) float32 target probability of the counterfactual.
  """

  images: jax.Array
  target: jax.Array
  steps: jax.Array
  status: jax.Array
  initial_prob: jax.Array
  final_prob: jax.Array


def total_variation(image: jax.Array) -> jax.Array:
  """Anisotropic total variation of one (H, W, C) image: the mean absolute
  difference of vertically and horizontally adjacent pixels, summed."""
  return (jnp.mean(jnp.abs(image[1:] - image[:-1]))
          + jnp.mean(jnp.abs(image[:, 1:] - image[:, :-1])))


@dataclasses.dataclass(frozen=True)
class DataFreeProblem:
  """The scheduler's problem (static). models = (classify[, statistics][, manifold])."""

  prior: Prior
  objective: str = "logit"
  optimizer: Any = None  # a factory of a learning rate, or a ready transformation
  precision: str = "float32"
  has_statistics: bool = False
  has_manifold: bool = False

  # -- the scheduler's protocol ----------------------------------------------

  def cast(self, models):
    return tuple(cast_model(m, self.precision) for m in models)

  def init(self, hyper: DataFreeHyper, z, target) -> DataFreeState:
    query = z.reshape(self.prior.image_shape)
    params = self.prior.init(query)
    tx = make_transformation(self.optimizer, hyper.step_size)
    return DataFreeState(
        params=params, opt_state=self.prior.init_opt(tx, params), query=query,
        target=jnp.asarray(target, jnp.int32), image=query, steps=jnp.array(0, jnp.int32),
        status=jnp.array(RUNNING, jnp.int32), initial_prob=jnp.array(jnp.nan, jnp.float32),
        final_prob=jnp.array(jnp.nan, jnp.float32))

  def _loss(self, models, hyper, params, query, target, steps):
    """One example's loss, target probability and image, from its own parameters."""
    classify = models[0]
    image = self.prior.render(params, query, steps, hyper.stage_steps)
    x = image[None].astype(self.precision)
    logits = classify(x)[0]
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    log_odds, log_prob = target_scores(logits, target)
    value = {"logit": log_odds, "prob": jnp.exp(log_prob), "log_prob": log_prob}[self.objective]
    loss = (-value + hyper.tv_weight * total_variation(image)
            + hyper.l2_weight * jnp.mean(jnp.square(image))
            + hyper.proximity_weight * jnp.mean(jnp.abs(image - query)))
    index = 1
    if self.has_statistics:
      stats = models[index](x)[0].astype(jnp.float32)
      loss = loss + hyper.statistics_weight * jnp.mean(
          jnp.square(stats - hyper.statistics_reference))
      index += 1
    if self.has_manifold:
      log_certainty = models[index](x)[0].astype(jnp.float32)
      loss = loss - hyper.manifold_weight * log_certainty[target]
    return loss, (jnp.exp(log_prob), image)

  def step(self, models, hyper: DataFreeHyper, states: DataFreeState) -> DataFreeState:
    per_example = jax.vmap(self._loss, in_axes=(None, None, 0, 0, 0, 0))

    def total(params):
      losses, aux = per_example(models, hyper, params, states.query, states.target, states.steps)
      return jnp.sum(losses), (losses, aux)

    grads, (loss, (prob, image)) = jax.grad(total, has_aux=True)(states.params)
    return jax.vmap(self._update, in_axes=(None, 0, 0, 0, 0, 0))(
        hyper, states, loss, prob, image, grads)

  def _update(self, hyper, state: DataFreeState, loss, prob, image, grads) -> DataFreeState:
    running = state.status == RUNNING
    grads = self.prior.gradients(grads, state.steps, hyper.stage_steps)
    leaves = jax.tree_util.tree_leaves(grads)
    finite = (jnp.isfinite(loss) & jnp.isfinite(prob)
              & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves])))
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))
    status = next_status(state.status, [
        (prob >= hyper.threshold, Status.REACHED), (~finite, Status.NON_FINITE),
        (state.steps >= hyper.max_steps, Status.MAX_STEPS),
        (grad_norm <= hyper.grad_tol, Status.ZERO_GRADIENT)])
    move = status == RUNNING
    tx = make_transformation(self.optimizer, hyper.step_size)
    params, opt_state = self.prior.apply(tx, state.params, state.opt_state, grads, move,
                                         state.steps, hyper.stage_steps)
    prob = prob.astype(jnp.float32)
    return DataFreeState(
        params=params, opt_state=opt_state, query=state.query, target=state.target,
        image=jnp.where(running, image, state.image),
        steps=state.steps + move.astype(jnp.int32), status=status,
        initial_prob=jnp.where(running & (state.steps == 0), prob, state.initial_prob),
        final_prob=jnp.where(running, prob, state.final_prob))

  def result(self, states: DataFreeState) -> DataFreeResult:
    return DataFreeResult(images=states.image, target=states.target, steps=states.steps,
                          status=states.status, initial_prob=states.initial_prob,
                          final_prob=states.final_prob)


# -- validation, in Python before anything is traced -------------------------------


def _check_images(images) -> np.ndarray:
  host = _array_checks.finite_rows(images, "images", 4, "query images (n, H, W, C)", "image")
  if host.size and (host.min() < 0 or host.max() > 1):
    raise ValueError(f"images must lie in [0, 1] (the prior clips counterfactuals to it); got "
                     f"values in [{host.min():.4g}, {host.max():.4g}]")
  return host


@overload  # as for `counterfactual_attack`: the stats only with `return_stats=True`
def data_free_attack(classify: Callable, images, target, *args: Any,
                     return_stats: Literal[False] = False, **kwargs: Any) -> DataFreeResult: ...


@overload
def data_free_attack(classify: Callable, images, target, *args: Any, return_stats: Literal[True],
                     **kwargs: Any) -> tuple[DataFreeResult, dict[str, Any]]: ...


def data_free_attack(
    classify: Callable,
    images,
    target,
    *,
    prior: str = "implicit",
    progressive: bool = True,
    stages: int = 3,
    stage_steps: int = 20,
    tv_weight: float = 0.05,
    l2_weight: float = 0.0,
    proximity_weight: float = 10.0,
    statistics: Callable | None = None,
    statistics_reference=None,
    statistics_weight: float = 1.0,
    manifold: Callable | None = None,
    manifold_weight: float = 0.003,
    threshold: float = 0.5,
    step_size: float | None = None,
    max_steps: int = 500,
    objective: str = "logit",
    optimizer="adam",
    grad_tol: float = 0.0,
    precision: str = "float32",
    width: int = 64,
    depth: int = 2,
    frequencies: int = 0,
    seed: int = 0,
    batch_size: int = 1024,
    schedule: str = "continuous",
    mesh=None,
    progress=False,
    return_stats: bool = False,
) -> DataFreeResult | tuple[DataFreeResult, dict[str, Any]]:
  """Counterfactuals of query images from the classifier alone (DISC-style deep inversion).

  Each query is optimised independently, through its image prior, until the
  classifier gives its target `threshold` probability (see the module
  docstring for the loss). The defaults are full DISC with cfajax's tuned
  weights (the manifold term needs `manifold`, e.g. a trained `cfajax.DUQ`);
  plain deep inversion is `prior="pixels", progressive=False` with
  `tv_weight` and `l2_weight` (and `statistics` for a network with
  normalisation layers); `prior="pixels", progressive=False` and every weight
  0 is the pixel attack (`cfajax.metrics.pixel_attack`) with Adam, except
  that a pixel pushed out of [0, 1] keeps its gradient (straight-through).

  Args:
    classify: images (B, H, W, C) -> logits (B, K), as for
      `counterfactual_attack`.
    images: (n, H, W, C) query images in [0, 1].
    target: () or (n,) target classes, as for `counterfactual_attack`.
    prior: "implicit" (a per-example coordinate MLP of the change) or
      "pixels".
    progressive: optimise coarse to fine over `stages` stages of
      `stage_steps` updates each.
    tv_weight, l2_weight, proximity_weight: weights of total variation,
      mean squared intensity, and mean absolute change from the query.
    statistics: optional images -> (B, k) feature statistics, e.g. the
      per-channel means and variances of the inputs of a network's
      normalisation layers; matched to `statistics_reference` (k,), e.g.
      those layers' running means and variances, with `statistics_weight`.
    manifold: optional images -> (B, K') log-certainties with one column per
      target class (a `cfajax.DUQ`); `-manifold(x')[t]` is weighted by
      `manifold_weight`.
    threshold, max_steps, objective, grad_tol, precision, batch_size,
      schedule, mesh, progress, return_stats: as for `counterfactual_attack`.
    step_size, optimizer: the optimizer (default Adam) and its learning rate
      (default `DEFAULT_STEP_SIZES[prior]`).
    width, depth, frequencies: the implicit prior's MLP (hidden width and
      layers) and Fourier bands (0: `default_frequencies`, finest period about
      two pixels).
    seed: the implicit prior's initial weights (shared by every example).

  Returns:
    A `DataFreeResult` of length n (and the scheduler's stats if
    `return_stats`).

  Raises:
    ValueError: on images, targets, models or options of the wrong type,
      shape or range.
  """
  images = _check_images(images)
  # The prior's parameters are float32, or float64 for float64 models.
  images = images.astype(np.float64 if precision == "float64" else np.float32)
  n, image_shape = len(images), tuple(images.shape[1:])
  _checks.choice("prior", prior, PRIORS)
  _checks.choice("objective", objective, OBJECTIVES)
  _array_checks.precision(precision, PRECISIONS)
  batch_size, mesh = _driver.check_schedule(schedule, batch_size, mesh)
  stages = _checks.integer("stages", stages, low=1, high=8)
  width = _checks.integer("width", width, low=1)
  depth = _checks.integer("depth", depth, low=1)
  frequencies = _checks.integer("frequencies", frequencies, low=0, high=16)
  frequencies = frequencies or default_frequencies(image_shape)
  image_prior: Prior = (
      PixelPrior(image_shape, bool(progressive), stages) if prior == "pixels"
      else ImplicitPrior(image_shape, bool(progressive), stages, width, depth, frequencies,
                         int(seed)))
  step_size = DEFAULT_STEP_SIZES[prior] if step_size is None else step_size
  weights = {name: _checks.number(name, value, low=0.0) for name, value in (
      ("tv_weight", tv_weight), ("l2_weight", l2_weight), ("proximity_weight", proximity_weight),
      ("statistics_weight", statistics_weight), ("manifold_weight", manifold_weight))}

  classify = as_pure_callable(classify)
  target = check_targets(target, n, output_width(classify, image_shape, "classify"),
                         "images")
  models = [classify]
  reference = np.zeros((0,), np.float32)
  if statistics is not None:
    statistics = as_pure_callable(statistics)
    k = output_width(statistics, image_shape, "statistics")
    if statistics_reference is None:
      raise ValueError("statistics needs statistics_reference: the (k,) values to match, e.g. "
                       "a network's normalisation layers' running means and variances")
    reference = np.asarray(statistics_reference, np.float32)
    if reference.shape != (k,) or not np.all(np.isfinite(reference)):
      raise ValueError(f"statistics_reference must be {k} finite values, one per statistic; got "
                       f"shape {reference.shape}")
    models.append(statistics)
  elif statistics_reference is not None:
    raise ValueError("statistics_reference was given without statistics, the function whose "
                     "values it is")
  if manifold is not None:
    manifold = as_pure_callable(manifold)
    classes = output_width(manifold, image_shape, "manifold")
    if target.size and target.max() >= classes:
      raise ValueError(f"manifold gives {classes} log-certainties, one per class; the targets go "
                       f"up to {target.max()}")
    models.append(manifold)

  hyper = DataFreeHyper(
      threshold=jnp.asarray(_checks.number("threshold", threshold, low=0.0, high=1.0,
                                           low_open=True, high_open=True), jnp.float32),
      step_size=jnp.asarray(_checks.number("step_size", step_size, low=0.0, low_open=True),
                            images.dtype),
      max_steps=jnp.asarray(_checks.integer("max_steps", max_steps, low=0), jnp.int32),
      grad_tol=jnp.asarray(_checks.number("grad_tol", grad_tol, low=0.0), jnp.float32),
      stage_steps=jnp.asarray(_checks.integer("stage_steps", stage_steps, low=1), jnp.int32),
      statistics_reference=jnp.asarray(reference),
      **{name: jnp.asarray(value, jnp.float32) for name, value in weights.items()})
  problem = DataFreeProblem(
      prior=image_prior, objective=objective, optimizer=_optimizer_factory(optimizer),
      precision=precision, has_statistics=statistics is not None,
      has_manifold=manifold is not None)
  flat = images.reshape(n, int(np.prod(image_shape)))
  result, stats = _driver.solve(problem, models, flat, target, hyper, schedule=schedule,
                                batch_size=batch_size, mesh=mesh, progress=progress,
                                label=("data-free counterfactuals", "image"))
  return (result, stats) if return_stats else result
