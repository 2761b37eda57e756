"""LPIPS (Zhang et al. 2018) as the `lpips` package computes it (version 0.1), in JAX, from
the standard weight files the user supplies.

An image pair's distance: both images scaled to [-1, 1] and shifted and scaled
per channel, run through a trunk (torchvision's AlexNet or VGG16 features) and
tapped after five ReLUs; at each tap the features are unit-normalised along
channels, their squared difference weighted per channel by a learned linear
layer and averaged over space; the five averages are summed. Two files: the
trunk's torchvision ImageNet weights (`alexnet-owt-7be5be79.pth`,
`vgg16-397923af.pth`) and the linear layers (`lpips/weights/v0.1/alex.pth` or
`vgg.pth`, shipped inside the `lpips` package).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._batching import map_batches
from cfajax._feature_nets import Weights
from cfajax._feature_nets import checked_images
from cfajax._feature_nets import conv
from cfajax._feature_nets import expected_weights
from cfajax._feature_nets import load_weights
from cfajax._feature_nets import max_pool
from cfajax._feature_nets import resize_bilinear
from cfajax._feature_nets import rgb

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


@dataclasses.dataclass(frozen=True)
class _Trunk:
  """A torchvision `features` stack: ("conv", index, out, kernel, stride, padding) or
  ("pool", size, stride) layers, a ReLU after every conv, tapped after the ReLUs listed."""
  layers: tuple
  taps: tuple[int, ...]  # the indices (in torchvision's numbering) of the tapped ReLUs
  min_size: int  # the smallest image side whose last tap is at least 1 x 1


def _vgg16() -> _Trunk:
  layers, index = [], 0
  for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
    if stage:
      layers.append(("pool", 2, 2))
      index += 1
    for _ in range(convs):
      layers.append(("conv", index, width, 3, 1, 1))
      index += 2
  return _Trunk(tuple(layers), taps=(3, 8, 15, 22, 29), min_size=16)


TRUNKS = {
    "alex": _Trunk((("conv", 0, 64, 11, 4, 2), ("pool", 3, 2), ("conv", 3, 192, 5, 1, 2),
                    ("pool", 3, 2), ("conv", 6, 384, 3, 1, 1), ("conv", 8, 256, 3, 1, 1),
                    ("conv", 10, 256, 3, 1, 1)), taps=(1, 4, 7, 9, 11), min_size=31),
    "vgg": _vgg16(),
}


def _taps(trunk: _Trunk, w: Weights, x):
  outs = []
  for layer in trunk.layers:
    if layer[0] == "pool":
      x = max_pool(x, layer[1], layer[2])
      continue
    _, index, out, kernel, stride, padding = layer
    x = jax.nn.relu(conv(w, f"features.{index}", x, out, kernel, stride=stride,
                         padding=padding, bias=True))
    if index + 1 in trunk.taps:
      outs.append(x)
  return outs


def _unit(f, eps=1e-10):
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + eps)


def lpips_pairs(net: str, w: Weights, a: jax.Array, b: jax.Array) -> jax.Array:
  """LPIPS of image pairs: (B, H, W, 1 or 3) in [0, 1] twice -> (B,)."""
  trunk = TRUNKS[net]
  shift, scale = jnp.asarray(_SHIFT, a.dtype), jnp.asarray(_SCALE, a.dtype)
  prepare = lambda x: (rgb(x) * 2 - 1 - shift) / scale
  both = _taps(trunk, w, jnp.concatenate([prepare(a), prepare(b)]))
  total = jnp.zeros(a.shape[0], a.dtype)
  for k, f in enumerate(both):
    fa, fb = jnp.split(f, 2)
    weight = w(f"lin{k}.model.1.weight", (1, f.shape[-1], 1, 1)).astype(a.dtype)
    total = total + jnp.mean(jnp.sum((_unit(fa) - _unit(fb)) ** 2 * weight[0, :, 0, 0], -1),
                             axis=(1, 2))
  return total


def _trunk_only(net: str, w: Weights, x):
  return _taps(TRUNKS[net], w, x)


def lpips_weights(net: str, trunk, linear) -> dict[str, np.ndarray]:
  """LPIPS weights from the trunk's torchvision file and the linear layers' lpips file.

  Raises:
    ValueError: an unknown `net`, or a file that does not hold the weights it
      should, naming the missing, unexpected or wrongly shaped ones.
  """
  if net not in TRUNKS:
    raise ValueError(f"net must be one of {sorted(TRUNKS)}; got {net!r}")
  trunk_spec = TRUNKS[net]
  expected = expected_weights(partial(_trunk_only, net), (64, 64, 3))
  widths = {layer[1] + 1: layer[2] for layer in trunk_spec.layers if layer[0] == "conv"}
  taps = [widths[relu] for relu in trunk_spec.taps]
  arrays = load_weights(trunk, expected, ignored=("classifier.",),
                        what=f"torchvision's {net} ImageNet weights (the LPIPS trunk)")
  linear_expected = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(taps)}
  arrays.update(load_weights(linear, linear_expected,
                             what=f"the LPIPS v0.1 linear layers for {net}"))
  return arrays


@partial(jax.jit, static_argnums=0)
def _distances(net: str, weights, a, b):
  return lpips_pairs(net, Weights(weights), a, b)


def lpips(images, others, *, trunk, linear, net: str = "alex", size: int | None = None,
          batch_size: int = 64) -> np.ndarray:
  """LPIPS between image pairs, as the `lpips` package (v0.1) computes it, in JAX.

  Args:
    images: (n, H, W, C) floats in [0, 1], C = 1 (repeated to RGB) or 3, e.g.
      the inputs x.
    others: (n, H, W, C) likewise, e.g. their counterfactuals x'.
    trunk: torchvision's ImageNet weight file of the trunk
      (`alexnet-owt-7be5be79.pth` for "alex", `vgg16-397923af.pth` for "vgg").
    linear: the LPIPS linear layers (`alex.pth` / `vgg.pth` of the lpips
      package's `weights/v0.1/`), or the same dicts as .safetensors / .npz.
    net: "alex" (the package's default) or "vgg".
    size: if given, both sets are first resized to size x size (bilinear,
      as torch's `F.interpolate`): MNIST's 28 x 28 is below AlexNet's smallest
      input (31).
    batch_size: pairs per compiled call.

  Returns:
    (n,) float32 distances; 0 for identical images, larger for more different.
  """
  if net not in TRUNKS:
    raise ValueError(f"net must be one of {sorted(TRUNKS)}; got {net!r}")
  a, b = checked_images("images", images), checked_images("others", others)
  if a.shape != b.shape:
    raise ValueError(f"images and others must be pairs of one shape; got {a.shape} and {b.shape}")
  side = min(a.shape[1:3]) if size is None else int(size)
  if side < TRUNKS[net].min_size:
    raise ValueError(f"LPIPS-{net} needs images of at least {TRUNKS[net].min_size} pixels a "
                     f"side; got {a.shape[1]} x {a.shape[2]}: pass size= to resize them")
  weights = {k: jnp.asarray(v) for k, v in lpips_weights(net, trunk, linear).items()}
  if size is not None:
    resize = jax.jit(lambda x: resize_bilinear(x, (side, side)))
    a, b = (np.asarray(map_batches(resize, [x], batch_size)) for x in (a, b))
  return np.asarray(map_batches(lambda x, y: _distances(net, weights, x, y), [a, b], batch_size))
