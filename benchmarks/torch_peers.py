"""PyTorch peers for the attack-throughput benchmark: same models, same weights, same device.

`attack_throughput.py` calls `run_peers`, which converts cfajax's NNX `ConvVAE`
decoder and `Classifier` to `torch.nn.Module`s holding the same weights,
refuses to go on unless the two agree (float32 logits, relative error <= 1e-4),
and times three PyTorch ways of running the attack with the `"logit"`
objective (the target's log-odds):

* `torch-loop-adam`: one latent at a time, `torch.optim.Adam` on that latent,
  a Python loop that reads the target probability with `.item()` each step:
  the style of the original authors' code. Slow, so it runs on `loop_count`
  latents only; its `batch` is 1.
* `torch-eager`: a (B, d) batch of latents, per-example gradients by one
  backward pass of the summed objective, a masked plain-ascent update of the
  latents still running, and a host check each step that stops the loop
  when none is.
* `torch-compile`: the same loop whose step (forward, gradient through
  `torch.func.grad_and_value`, stop checks, masked update) is one
  `torch.compile`d function (mode "default", `dynamic=False`).

The stop rule is cfajax's: before each update a latent stops when its target
probability reaches the threshold (0 steps if it holds at once), when its
probability or gradient is not finite, when it has taken `max_steps` updates,
or when its gradient is zero; stopped latents do not move.

Run this file to check the conversion and the peers' agreement with cfajax
on small random models (`PYTHONPATH` must hold a cfajax with `_models`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

RUNNING = -1  # cfajax's status codes (cfajax.Status)
REACHED, NON_FINITE, MAX_STEPS, ZERO_GRADIENT = 0, 3, 1, 2
FIXED_STEP_SIZE = 1e-3  # attack_throughput.fixed_step_rate's step size
MAX_REL_ERROR = 1e-4  # float32 torch-vs-JAX logits above this and run_peers refuses
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# -- the models, converted ------------------------------------------------------


def _array(param) -> np.ndarray:
  """An NNX parameter's value as a float32 host array."""
  return np.asarray(param[...], dtype=np.float32)


def _set(tensor: torch.Tensor, value: np.ndarray) -> None:
  if tuple(tensor.shape) != value.shape:
    raise ValueError(f"shape mismatch converting weights: torch {tuple(tensor.shape)}, "
                     f"flax {value.shape}")
  with torch.no_grad():
    tensor.copy_(torch.from_numpy(np.array(value, np.float32)))  # a writable copy


def _conv(flax_conv) -> nn.Conv2d:
  """A stride-1 3x3 SAME `nnx.Conv` (kernel HWIO) as a `Conv2d` (weight OIHW)."""
  kernel = _array(flax_conv.kernel)
  kh, kw, cin, cout = kernel.shape
  conv = nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))
  _set(conv.weight, kernel.transpose(3, 2, 0, 1))
  _set(conv.bias, _array(flax_conv.bias))
  return conv


def _sub_pixel_conv(flax_conv) -> nn.Conv2d:
  """A decoder level's 3x3 `nnx.Conv` to 4c channels, reordered for `F.pixel_shuffle`.

  cfajax's `_depth_to_space` reads channel `(2 * dy + dx) * c + k` as output
  channel k at offset (dy, dx) of each 2x2 block: order (2, 2, c).
  `F.pixel_shuffle(h, 2)` reads channel `4 * k + 2 * dy + dx`: order (c, 2, 2).
  Permuting the convolution's output channels (weights and biases) makes the
  two produce the same image.
  """
  conv = _conv(flax_conv)
  channels = conv.out_channels // 4
  order = torch.arange(4 * channels).reshape(4, channels).T.reshape(-1)  # torch i <- flax order[i]
  with torch.no_grad():
    conv.weight.copy_(conv.weight[order])
    conv.bias.copy_(conv.bias[order])
  return conv


class TorchDecoder(nn.Module):
  """`ConvVAE.decode` in PyTorch: latents (B, d) -> images (B, C, H, W) in [0, 1].

  As `ConvVAE.decode_logits`: a dense layer and SiLU to the smallest feature
  map, then per level a 3x3 convolution to 4x the channels, depth-to-space
  (`F.pixel_shuffle`, the channels reordered by `_sub_pixel_conv`), a crop
  where a size was odd, and SiLU at every level but the last, which gives the
  logits; then a sigmoid. flax reshapes the first dense layer's output as
  NHWC; its output features are reordered here so that a plain view gives
  NCHW, with the same values.
  """

  def __init__(self, vae):
    super().__init__()
    config = vae.config
    # (H, W) after 0, 1, ... halvings
    self.sizes = list(zip(vae.heights, vae.widths_px, strict=True))
    top, (h, w) = config.widths[-1], self.sizes[-1]
    self.top_shape = (top, h, w)
    kernel = _array(vae.from_latent.kernel)  # (d, h * w * top), features in (y, x, c) order
    d = kernel.shape[0]
    self.from_latent = nn.Linear(d, h * w * top)
    _set(self.from_latent.weight,
         kernel.reshape(d, h, w, top).transpose(3, 1, 2, 0).reshape(top * h * w, d))
    _set(self.from_latent.bias,
         _array(vae.from_latent.bias).reshape(h, w, top).transpose(2, 0, 1).reshape(-1))
    self.convs = nn.ModuleList(_sub_pixel_conv(layer) for layer in vae.decoder)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = F.silu(self.from_latent(z)).view(z.shape[0], *self.top_shape)
    for level, conv in zip(range(len(self.convs) - 1, -1, -1), self.convs, strict=True):
      height, width = self.sizes[level]
      h = F.pixel_shuffle(conv(h), 2)[:, :, :height, :width]
      if level > 0:
        h = F.silu(h)
    return torch.sigmoid(h)


class TorchClassifier(nn.Module):
  """`Classifier.__call__` in PyTorch: images (B, C, H, W) -> logits (B, K).

  `max_pool` SAME with a 2x2 window and stride 2 pads odd sizes at the end
  with -inf: `max_pool2d(..., ceil_mode=True)`. flax flattens NHWC; the
  hidden layer's input features are reordered to take torch's NCHW flatten.
  """

  def __init__(self, classifier):
    super().__init__()
    config = classifier.config
    self.depth = config.depth
    self.convs = nn.ModuleList(_conv(layer) for layer in classifier.convs)
    height, width, _ = config.image_shape
    for _ in config.widths:
      height, width = -(-height // 2), -(-width // 2)
    channels = config.widths[-1]
    kernel = _array(classifier.hidden.kernel)  # (h * w * c, hidden), rows in (y, x, c) order
    hidden = kernel.shape[1]
    self.hidden = nn.Linear(kernel.shape[0], hidden)
    _set(self.hidden.weight,
         kernel.reshape(height, width, channels, hidden).transpose(3, 2, 0, 1)
         .reshape(hidden, -1))
    _set(self.hidden.bias, _array(classifier.hidden.bias))
    self.logits = nn.Linear(hidden, config.num_outputs)
    _set(self.logits.weight, _array(classifier.logits.kernel).T)
    _set(self.logits.bias, _array(classifier.logits.bias))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = x
    for i, conv in enumerate(self.convs):
      h = F.relu(conv(h))
      if (i + 1) % self.depth == 0:
        h = F.max_pool2d(h, 2, 2, ceil_mode=True)
    h = F.relu(self.hidden(h.flatten(1)))
    return self.logits(h)


def default_device() -> torch.device:
  """CUDA when torch sees a GPU (where JAX runs too), else the CPU."""
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_models(vae, classifier, dtype=torch.float32, device=None):
  """(decoder, classifier): `vae.decode` and `classifier` as torch modules, same weights.

  Args:
    vae: a cfajax `ConvVAE` (only its decoder is converted).
    classifier: a cfajax `Classifier`.
    dtype: the modules' parameter dtype (torch.float32 or torch.bfloat16),
      or "float32"/"bfloat16".
    device: default: `default_device()`.
  """
  dtype = DTYPES.get(dtype, dtype)
  device = device or default_device()
  decoder = TorchDecoder(vae).to(device=device, dtype=dtype).eval()
  torch_classifier = TorchClassifier(classifier).to(device=device, dtype=dtype).eval()
  for p in list(decoder.parameters()) + list(torch_classifier.parameters()):
    p.requires_grad_(False)  # only the latents are differentiated
  return decoder, torch_classifier


# -- checks against JAX -----------------------------------------------------------


def _jax_logits(vae, classifier, z: np.ndarray, precision: str) -> np.ndarray:
  """classify(decode(z)) in JAX, the models cast to `precision` as cfajax casts them."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  def cast(module):
    if precision == "float32":
      return module
    graphdef, state = nnx.split(module)
    state = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return nnx.merge(graphdef, state)

  vae, classifier = cast(vae), cast(classifier)
  logits = classifier(vae.decode(jnp.asarray(z).astype(precision)))
  return np.asarray(logits.astype(jnp.float32))


class _full_float32:
  """Context: float32 matmuls and convolutions at full precision (no TF32), JAX and torch."""

  def __enter__(self):
    import jax
    self._jax = jax.default_matmul_precision("highest")
    self._jax.__enter__()
    self._tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

  def __exit__(self, *exc):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._tf32
    return self._jax.__exit__(*exc)


def _jax_log_odds_grad(vae, classifier, z: np.ndarray, target: np.ndarray) -> np.ndarray:
  """d/dz of the target's log-odds, per latent, in JAX (float32)."""
  import jax
  import jax.numpy as jnp

  def total(z):
    logits = classifier(vae.decode(z))
    if logits.shape[1] == 1:
      return jnp.sum(jnp.where(target == 1, logits[:, 0], -logits[:, 0]))
    mine = jax.nn.one_hot(target, logits.shape[1], dtype=bool)
    others = jax.nn.logsumexp(jnp.where(mine, -jnp.inf, logits), axis=1)
    return jnp.sum(jnp.sum(jnp.where(mine, logits, 0.0), axis=1) - others)

  return np.asarray(jax.grad(total)(jnp.asarray(z)))


def check_equivalence(vae, classifier, models=None, precision="float32", n=64, seed=0,
                      device=None) -> dict[str, float]:
  """Compares torch's and JAX's logits of classify(decode(z)) on random latents.

  In float32 both sides run at full precision (no TF32), so the errors
  measure the conversion, not the GPU's default rounding; the gradients of
  the log-odds objective (random targets) are compared too. In bfloat16 both
  sides cast the models' parameters and the decoder's input to bf16.

  Args:
    models: `torch_models(...)` in `precision`'s dtype (default: converted here).
    n: number of N(0, I) latents.

  Returns:
    `max_abs_error` (max |torch - jax| over the (n, K) logits) and
    `max_rel_error` (that divided by max |jax logit|: a norm-wise relative
    error, which stays meaningful where a logit is near 0); in float32 also
    `grad_median_rel_error` and `grad_max_rel_error`, the median and max over
    latents of max |grad_torch - grad_jax| / max |grad_jax|. A few latents
    may sit within rounding of a ReLU or max-pool kink, where the gradient
    itself jumps: the max can be large when the median is ~1e-6.
  """
  device = device or default_device()
  decoder, torch_classifier = models or torch_models(vae, classifier, DTYPES[precision], device)
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, vae.config.latent_dim)).astype(np.float32)
  with _full_float32():
    reference = _jax_logits(vae, classifier, z, precision)
    with torch.no_grad():
      zt = torch.from_numpy(z).to(device)
      ours = torch_classifier(decoder(zt.to(DTYPES[precision]))).float().cpu().numpy()
    abs_error = float(np.max(np.abs(ours - reference)))
    result = {"max_abs_error": abs_error,
              "max_rel_error": abs_error / max(float(np.max(np.abs(reference))), 1e-30)}
    if precision == "float32":
      classes = max(2, reference.shape[1])
      target = rng.integers(0, classes, n)
      jax_grad = _jax_log_odds_grad(vae, classifier, z, target)
      zt = torch.from_numpy(z).to(device).requires_grad_(True)
      log_odds, _ = _objective(decoder, torch_classifier, torch.float32, zt,
                               torch.from_numpy(target).to(device))
      log_odds.sum().backward()
      rel = (np.abs(zt.grad.cpu().numpy() - jax_grad).max(axis=1)
             / np.maximum(np.abs(jax_grad).max(axis=1), 1e-30))
      result.update(grad_median_rel_error=float(np.median(rel)),
                    grad_max_rel_error=float(rel.max()))
  return result


# -- the attack, three ways -----------------------------------------------------------


def target_scores(logits: torch.Tensor, target: torch.Tensor):
  """(log_odds, prob), each (B,), as cfajax's `_loop.target_scores` (float32 logits).

  K == 1: sigmoid, target 1 means p >= threshold, 0 means p <= 1 - threshold.
  K >= 2: softmax; log-odds = logit_t - logsumexp(logits without t).
  """
  if logits.shape[-1] == 1:
    margin = torch.where(target == 1, logits[:, 0], -logits[:, 0])
    return margin, torch.exp(F.logsigmoid(margin))
  index = target[:, None]
  log_p = torch.log_softmax(logits, dim=-1).gather(1, index)[:, 0]
  mine = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, index, True)
  others = torch.logsumexp(logits.masked_fill(mine, -math.inf), dim=-1)
  return logits.gather(1, index)[:, 0] - others, torch.exp(log_p)


def _objective(decoder, classifier, dtype, z, target):
  # Latents and gradients stay float32; only the models' arithmetic is `dtype`.
  logits = classifier(decoder(z.to(dtype))).float()
  return target_scores(logits, target)


def _new_status(prob, grad, steps, status, threshold, max_steps):
  """cfajax's check, for a batch: reached, non-finite, out of steps, zero gradient."""
  finite = torch.isfinite(prob) & torch.isfinite(grad).all(dim=1)
  grad_norm = grad.float().square().sum(dim=1).sqrt()
  new = torch.full_like(status, RUNNING)
  new = torch.where(grad_norm <= 0.0, torch.full_like(new, ZERO_GRADIENT), new)
  new = torch.where(steps >= max_steps, torch.full_like(new, MAX_STEPS), new)
  new = torch.where(~finite, torch.full_like(new, NON_FINITE), new)
  new = torch.where(prob >= threshold, torch.full_like(new, REACHED), new)
  return torch.where(status == RUNNING, new, status)


def attack_eager(decoder, classifier, z, target, *, threshold, max_steps, step_size,
                 dtype=torch.float32):
  """The batched eager peer: (B, d) latents, one backward per step, a host check per step.

  Returns:
    (z, steps, status, iterations): final (B, d) latents, (B,) updates taken,
    (B,) status codes, and the number of forward/backward passes of the batch.
  """
  z = z.detach().clone().requires_grad_(True)
  steps = torch.zeros(z.shape[0], dtype=torch.int32, device=z.device)
  status = torch.full_like(steps, RUNNING)
  iterations = 0
  while True:
    iterations += 1
    log_odds, prob = _objective(decoder, classifier, dtype, z, target)
    z.grad = None
    log_odds.sum().backward()  # each latent's objective depends on that latent only
    with torch.no_grad():
      status = _new_status(prob, z.grad, steps, status, threshold, max_steps)
      move = status == RUNNING
      z.copy_(torch.where(move[:, None], z + step_size * z.grad, z))
      steps += move.to(torch.int32)
    if not bool(move.any()):  # the host reads the device every step
      break
  return z.detach(), steps, status, iterations


def make_compiled_step(decoder, classifier, dtype=torch.float32, **compile_options):
  """A `torch.compile`d (z, target, steps, status, hyper...) -> (z, steps, status, any_running)."""
  def objective(z, target):
    log_odds, prob = _objective(decoder, classifier, dtype, z, target)
    return log_odds.sum(), prob

  value_and_grad = torch.func.grad_and_value(objective, has_aux=True)

  def step(z, target, steps, status, threshold, max_steps, step_size):
    grad, (_, prob) = value_and_grad(z, target)
    status = _new_status(prob, grad, steps, status, threshold, max_steps)
    move = status == RUNNING
    z = torch.where(move[:, None], z + step_size * grad, z)
    return z, steps + move.to(torch.int32), status, move.any()

  return torch.compile(step, **compile_options)


def attack_compiled(step, z, target, *, threshold, max_steps, step_size):
  """The batched compiled peer: the eager loop with `step` from `make_compiled_step`."""
  device = z.device
  hyper = (torch.tensor(threshold, dtype=torch.float32, device=device),
           torch.tensor(max_steps, dtype=torch.int32, device=device),
           torch.tensor(step_size, dtype=torch.float32, device=device))
  steps = torch.zeros(z.shape[0], dtype=torch.int32, device=device)
  status = torch.full_like(steps, RUNNING)
  iterations = 0
  while True:
    iterations += 1
    z, steps, status, running = step(z, target, steps, status, *hyper)
    if not bool(running):
      break
  return z, steps, status, iterations


def attack_loop_adam(decoder, classifier, z, target, *, threshold, max_steps, lr,
                     dtype=torch.float32):
  """The original authors' style: one latent at a time, Adam, `.item()` checks.

  Each latent: check its target probability, stop if it reached `threshold`
  (or after `max_steps` updates), else one Adam step on the negated log-odds.

  Returns:
    (z, steps, iterations): final (n, d) latents, (n,) updates taken, and the
    number of forward passes (batch 1) in all.
  """
  finals, all_steps, iterations = [], [], 0
  for i in range(z.shape[0]):
    zi = z[i:i + 1].detach().clone().requires_grad_(True)
    ti = target[i:i + 1]
    optimizer = torch.optim.Adam([zi], lr=lr)
    steps = 0
    while True:
      iterations += 1
      log_odds, prob = _objective(decoder, classifier, dtype, zi, ti)
      if prob.item() >= threshold or steps >= max_steps:
        break
      optimizer.zero_grad()
      (-log_odds.sum()).backward()  # Adam minimises
      optimizer.step()
      steps += 1
    finals.append(zi.detach())
    all_steps.append(steps)
  return torch.cat(finals), np.asarray(all_steps), iterations


# -- timing ---------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device, *, repeats: int, warmup: int) -> dict[str, Any]:
  """Like timing.time_call, synchronizing the torch device before reading the clock."""
  _synchronize(device)
  start = time.perf_counter()
  out = fn()
  _synchronize(device)
  first = time.perf_counter() - start
  for _ in range(max(0, warmup - 1)):
    fn()
  _synchronize(device)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    _synchronize(device)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"out": out, "first_s": first, "median_s": median,
          "spread": (max(times) - min(times)) / median}


def _row(impl, precision, batch, latent_steps, iterations, measured, compile_s, rel_error,
         device, note=""):
  peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
  return {"impl": impl, "precision": precision, "batch": batch,
          "latent_steps": int(latent_steps), "iterations": int(iterations),
          "compile_s": compile_s, "median_s": measured["median_s"],
          "spread": measured["spread"],
          "latent_steps_per_s": latent_steps / measured["median_s"],
          "gflops_per_s": None, "fraction_of_matmul_peak": None,
          "peak_memory_bytes": peak, "max_rel_error": rel_error, "note": note}


def _failed_row(impl, precision, batch, rel_error, note):
  print(f"  {impl} {precision:8s} batch {batch:6d}: {note}")
  return {"impl": impl, "precision": precision, "batch": batch, "latent_steps": None,
          "iterations": None, "compile_s": None, "median_s": None, "spread": None,
          "latent_steps_per_s": None, "gflops_per_s": None, "fraction_of_matmul_peak": None,
          "peak_memory_bytes": None, "max_rel_error": rel_error, "note": note}


def _reason(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}"


def setup_device(device: torch.device) -> dict[str, Any]:
  """Threads on CPU; TF32 on GPU (JAX's default float32 arithmetic there).

  On a CPU that other processes share, run with `OMP_WAIT_POLICY=PASSIVE`
  (it must be set before torch is imported): with OpenMP's default active
  wait, each operator's threads spin at its end while the cores are taken,
  which cost ~0.2 s per attack iteration on 2 shared cores (a batch-1
  iteration takes ~2 ms when passive). XLA's CPU thread pool does not spin
  that way, so the default would measure the contention, not PyTorch.
  """
  if device.type == "cpu":
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cpus)
    return {"device": "cpu", "threads": cpus,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active)")}
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  return {"device": torch.cuda.get_device_name(device), "tf32": True}


def run_peers(vae, classifier, z, target, batches, steps, loop_count=32, threshold=1 - 1e-7,
              repeats=3, loop_repeats=2, device=None):
  """Times the three PyTorch peers at a fixed number of steps; rows like cfajax's.

  Every latent takes exactly `steps` plain-ascent updates of size 1e-3 (Adam
  with lr 1e-3 for the loop) unless it reaches `threshold`, as in
  `attack_throughput.fixed_step_rate`. Batches are `np.resize(z, (batch, d))`,
  like cfajax's rows.

  Returns:
    One dict per (impl, precision, batch) with cfajax's row keys (`impl`,
    `precision`, `batch`, `latent_steps`, `iterations`, `compile_s`,
    `median_s`, `spread`, `latent_steps_per_s`, ...), plus `max_rel_error`
    (torch vs JAX logits in that precision) and `note`. `iterations` counts
    the batch's forward/backward passes; for the loop, its batch-1 passes.

  Raises:
    RuntimeError: if the float32 conversion's relative error exceeds 1e-4.
  """
  device = device or default_device()
  facts = setup_device(device)
  print(f"PyTorch {torch.__version__} on {facts}")
  z = np.asarray(z, np.float32)
  target = np.asarray(target)
  errors, models = {}, {}
  for precision, dtype in DTYPES.items():
    models[precision] = torch_models(vae, classifier, dtype, device)
    errors[precision] = check_equivalence(vae, classifier, models[precision], precision,
                                          device=device)
    print(f"  torch vs JAX ({precision}): " + ", ".join(
        f"{k} {v:.3g}" for k, v in errors[precision].items()))
  if not errors["float32"]["max_rel_error"] <= MAX_REL_ERROR:
    raise RuntimeError(
        f"the PyTorch models do not match the JAX ones: float32 logits differ by "
        f"{errors['float32']['max_rel_error']:.3g} (relative) > {MAX_REL_ERROR}")

  options = dict(threshold=threshold, max_steps=steps, step_size=FIXED_STEP_SIZE)
  # Cold compiles, as JAX's (no persistent cache by default): no FX graph cache.
  import torch._inductor.config as inductor_config
  inductor_config.fx_graph_cache = False
  rows = []
  for batch in batches:
    zb = np.resize(z, (batch, z.shape[1])).astype(np.float32)
    tb = np.resize(target, (batch,)).astype(np.int64)
    for precision, dtype in DTYPES.items():
      decoder, torch_classifier = models[precision]
      rel = errors[precision]["max_rel_error"]
      # The closures below are called within this iteration, so they see this iteration's values.
      to_device = lambda: (torch.from_numpy(zb).to(device), torch.from_numpy(tb).to(device))  # noqa: B023

      def eager():
        zt, tt = to_device()  # noqa: B023
        return attack_eager(decoder, torch_classifier, zt, tt, dtype=dtype, **options)  # noqa: B023

      if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
      try:
        measured = _time(eager, device, repeats=repeats, warmup=1)
        _, done, _, iterations = measured["out"]
        rows.append(_row("torch-eager", precision, batch, int(done.sum()), iterations,
                         measured, 0.0, rel, device))
        print(f"  torch-eager {precision:8s} batch {batch:6d}: "
              f"{rows[-1]['latent_steps_per_s']:.4g} latent-steps/s")
      except Exception as e:  # e.g. out of memory, or a bf16 op missing on this device
        rows.append(_failed_row("torch-eager", precision, batch, rel, f"failed: {_reason(e)}"))

      if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
      try:
        torch._dynamo.reset()  # each (precision, batch) compiles afresh, as cfajax's jit does
        step = make_compiled_step(decoder, torch_classifier, dtype, dynamic=False,
                                  fullgraph=True)

        def compiled():
          zt, tt = to_device()  # noqa: B023
          return attack_compiled(step, zt, tt, **options)  # noqa: B023

        measured = _time(compiled, device, repeats=repeats, warmup=1)
      except Exception as e:  # no compiler toolchain, an unsupported op, out of memory, ...
        rows.append(_failed_row("torch-compile", precision, batch, rel,
                                f"compile failed: {_reason(e)}"))
        continue
      _, done, _, iterations = measured["out"]
      rows.append(_row("torch-compile", precision, batch, int(done.sum()), iterations,
                       measured, measured["first_s"] - measured["median_s"], rel, device,
                       note="torch.compile mode=default, fullgraph, dynamic=False"))
      print(f"  torch-compile {precision:8s} batch {batch:6d}: "
            f"{rows[-1]['latent_steps_per_s']:.4g} latent-steps/s, "
            f"compile {rows[-1]['compile_s']:.2f} s")

  zl = np.resize(z, (loop_count, z.shape[1])).astype(np.float32)
  tl = np.resize(target, (loop_count,)).astype(np.int64)
  for precision, dtype in DTYPES.items():
    decoder, torch_classifier = models[precision]
    rel = errors[precision]["max_rel_error"]

    # The closure below is called within this iteration, so it sees this iteration's values.
    def loop():
      zt, tt = torch.from_numpy(zl).to(device), torch.from_numpy(tl).to(device)
      return attack_loop_adam(decoder, torch_classifier, zt, tt, dtype=dtype,  # noqa: B023
                              threshold=threshold, max_steps=steps, lr=FIXED_STEP_SIZE)

    if device.type == "cuda":
      torch.cuda.reset_peak_memory_stats(device)
    try:
      measured = _time(loop, device, repeats=loop_repeats, warmup=1)
    except Exception as e:
      rows.append(_failed_row("torch-loop-adam", precision, 1, rel, f"failed: {_reason(e)}"))
      continue
    _, done, iterations = measured["out"]
    rows.append(_row("torch-loop-adam", precision, 1, int(done.sum()), iterations, measured,
                     0.0, rel, device, note=f"{loop_count} latents, one at a time"))
    print(f"  torch-loop-adam {precision:8s} ({loop_count} latents): "
          f"{rows[-1]['latent_steps_per_s']:.4g} latent-steps/s")
  return rows


# -- agreement with cfajax ----------------------------------------------------------------------


def check_agreement(vae, classifier, z, target, *, threshold=0.5, step_size=0.1, adam_lr=0.05,
                    max_steps=100, device=None) -> dict[str, dict[str, float]]:
  """Runs each float32 peer and cfajax on the same latents at a reachable threshold.

  The eager and compiled peers are compared with cfajax's plain ascent, the
  Adam loop with cfajax's `optimizer=optax.adam(adam_lr)`. Both sides use
  full float32 (no TF32). Returns, per peer: the fraction of latents with the
  same step count, the largest step-count difference, the fraction whose
  final latent is within 1e-4 of cfajax's (max-norm), the median and max of
  that distance, and the range of cfajax's step counts.

  Exact agreement is not to be expected over many steps: the models are
  piecewise linear (ReLU, max-pool), and where a latent passes within float32
  rounding of a kink, JAX's own gradient jumps (by 5% on one of 256 random
  latents of a sharpened MNIST-sized model) under a 1e-7 perturbation; the
  two trajectories then part. Compare over few steps for a tight check.
  """
  import optax

  import cfajax

  device = device or default_device()
  z = np.asarray(z, np.float32)
  target = np.asarray(target).astype(np.int32)
  decoder, torch_classifier = torch_models(vae, classifier, torch.float32, device)
  zt, tt = torch.from_numpy(z).to(device), torch.from_numpy(target.astype(np.int64)).to(device)
  common = dict(threshold=threshold, max_steps=max_steps)
  with _full_float32():
    plain = cfajax.counterfactual_attack(vae.decode, classifier, z, target, step_size=step_size,
                                         optimizer="ascent", batch_size=len(z), **common)
    adam = cfajax.counterfactual_attack(vae.decode, classifier, z, target,
                                        optimizer=optax.adam(adam_lr), batch_size=len(z),
                                        **common)
    eager = attack_eager(decoder, torch_classifier, zt, tt, step_size=step_size, **common)
    torch._dynamo.reset()
    step = make_compiled_step(decoder, torch_classifier, torch.float32, dynamic=False,
                              fullgraph=True)
    compiled = attack_compiled(step, zt, tt, step_size=step_size, **common)
    loop = attack_loop_adam(decoder, torch_classifier, zt, tt, lr=adam_lr, **common)

  def compare(ours_z, ours_steps, ours_status, reference):
    ours_z = ours_z.cpu().numpy()
    ours_steps = np.asarray(ours_steps.cpu() if torch.is_tensor(ours_steps) else ours_steps)
    ref_z, ref_steps = np.asarray(reference.z), np.asarray(reference.steps)
    dz = np.abs(ours_z - ref_z).max(axis=1)
    stats = {"same_steps": float(np.mean(ours_steps == ref_steps)),
             "max_step_difference": int(np.abs(ours_steps - ref_steps).max()),
             "z_within_1e-4": float(np.mean(dz <= 1e-4)),
             "median_abs_dz": float(np.median(dz)), "max_abs_dz": float(dz.max()),
             "cfajax_steps_min": int(ref_steps.min()),
             "cfajax_steps_max": int(ref_steps.max())}
    if ours_status is not None:
      stats["same_status"] = float(
          np.mean(ours_status.cpu().numpy() == np.asarray(reference.status)))
    return stats

  return {"torch-eager": compare(eager[0], eager[1], eager[2], plain),
          "torch-compile": compare(compiled[0], compiled[1], compiled[2], plain),
          "torch-loop-adam": compare(loop[0], loop[1], None, adam)}


def agreement_failures(agreement, min_same_steps=0.9, max_median_dz=1e-3) -> list[str]:
  """What in `check_agreement`'s output falls short; empty when the peers agree.

  A peer agrees when at least `min_same_steps` of the latents take cfajax's
  number of steps (and stop for the same reason, where the peer reports it),
  no step count is off by more than one, and the median final latent is within
  `max_median_dz` (max-norm) of cfajax's. The slack is for latents that pass
  within rounding of a ReLU or max-pool kink (see `check_agreement`).
  """
  failures = []
  for impl, stats in agreement.items():
    if stats["same_steps"] < min_same_steps:
      failures.append(f"{impl}: only {stats['same_steps']:.0%} of step counts match cfajax's")
    if stats.get("same_status", 1.0) < min_same_steps:
      failures.append(f"{impl}: only {stats['same_status']:.0%} of statuses match cfajax's")
    if stats["max_step_difference"] > 1:
      failures.append(f"{impl}: a step count differs from cfajax's by "
                      f"{stats['max_step_difference']}")
    if not stats["median_abs_dz"] <= max_median_dz:
      failures.append(f"{impl}: median final-latent difference {stats['median_abs_dz']:.3g} "
                      f"> {max_median_dz}")
  return failures


def main():
  """Self-check on random models: conversion, agreement, a tiny timing run; exits 1 on failure."""
  import argparse

  from flax import nnx

  import cfajax

  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--workload", choices=("mnist", "celeba"), default="mnist")
  parser.add_argument("--n", type=int, default=32, help="latents for the agreement check")
  parser.add_argument("--threshold", type=float, default=0.1)
  parser.add_argument("--max-steps", type=int, default=100)
  parser.add_argument("--step-size", type=float, default=3.0)
  parser.add_argument("--adam-lr", type=float, default=0.5)
  parser.add_argument("--sharpen", type=float, default=100.0,
                      help="scales the random classifier's last layer: untrained, its "
                           "probabilities hardly move and no threshold would be reachable")
  parser.add_argument("--time", action="store_true", help="also a tiny run_peers")
  args = parser.parse_args()
  if args.workload == "mnist":
    vae_config = cfajax.VAEConfig((28, 28, 1), 16, (32, 64))
    classifier_config = cfajax.ClassifierConfig((28, 28, 1), 10, "softmax", (32, 64))
  else:
    vae_config = cfajax.VAEConfig((64, 64, 3), 64, (32, 64, 128, 256))
    classifier_config = cfajax.ClassifierConfig((64, 64, 3), 1, "sigmoid", (32, 64, 128))
  vae = cfajax.ConvVAE(vae_config, rngs=nnx.Rngs(0))
  classifier = cfajax.Classifier(classifier_config, rngs=nnx.Rngs(1))
  classifier.logits.kernel[...] = classifier.logits.kernel[...] * args.sharpen
  device = default_device()
  setup_device(device)
  failures = []
  for precision in DTYPES:
    errors = check_equivalence(vae, classifier, precision=precision, device=device)
    print(precision, errors)
    if precision == "float32" and not errors["max_rel_error"] <= MAX_REL_ERROR:
      failures.append(f"float32 logits differ by {errors['max_rel_error']:.3g} (relative) "
                      f"> {MAX_REL_ERROR}")
  z = np.random.default_rng(0).standard_normal((args.n, vae_config.latent_dim)).astype(np.float32)
  logits = np.asarray(classifier(vae.decode(z)))
  if logits.shape[1] == 1:
    target = (logits[:, 0] < 0).astype(np.int32)
  else:
    target = ((np.argmax(logits, 1) + 1) % logits.shape[1]).astype(np.int32)
  agreement = check_agreement(vae, classifier, z, target, threshold=args.threshold,
                              max_steps=args.max_steps, step_size=args.step_size,
                              adam_lr=args.adam_lr, device=device)
  for impl, stats in agreement.items():
    print(impl, stats)
  failures += agreement_failures(agreement)
  if args.time:
    for row in run_peers(vae, classifier, z, target, [8], 3, loop_count=2):
      print(row)
  if failures:
    raise SystemExit("self-check FAILED:\n  " + "\n  ".join(failures))
  print("self-check passed: the torch models match cfajax's and the peers agree with its attack")


if __name__ == "__main__":
  main()
