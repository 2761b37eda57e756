"""Turn user models into pytrees whose parameters are traced, not baked in.

A jitted function sees its static arguments as compile-time constants. Passing a
Flax module's bound method as a static argument would bake its weights into the
compiled program (large constants, and stale results if the weights change). So
every `decode`/`classify` is converted to a `jax.tree_util.Partial`: the callable
part is static and hashable, the parameters are leaves that flow in as traced
arguments. Two calls with the same model structure then share one compilation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class _ModuleMethod:
  """Calls `method` on the module rebuilt from `graphdef` and a state."""

  graphdef: Any
  method: str

  def __call__(self, state, *args):
    module = nnx.merge(self.graphdef, state)
    return getattr(module, self.method)(*args)


def as_pure_callable(fn: Callable[..., Any]) -> jax.tree_util.Partial:
  """Returns `fn` as a pytree callable with its parameters as leaves.

  Accepted forms:
    * an `nnx.Module` (its `__call__` is used);
    * a bound method of an `nnx.Module`, e.g. `vae.decode`;
    * a `jax.tree_util.Partial`, e.g. `Partial(model.apply, params)`;
    * any other JAX-traceable callable (closed-over arrays become constants
      of the compiled program).

  Raises:
    TypeError: if `fn` is not callable.
  """
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  if isinstance(fn, nnx.Module):
    graphdef, state = nnx.split(fn)
    return jax.tree_util.Partial(_ModuleMethod(graphdef, "__call__"), state)
  owner = getattr(fn, "__self__", None)
  if isinstance(owner, nnx.Module):
    graphdef, state = nnx.split(owner)
    return jax.tree_util.Partial(_ModuleMethod(graphdef, fn.__name__), state)
  if not callable(fn):
    raise TypeError(f"expected a callable model, got {type(fn).__name__}")
  return jax.tree_util.Partial(fn)
