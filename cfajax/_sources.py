"""Models from what a user hands in: callables, cfajax checkpoints or import strings.

A classifier is any JAX callable `images (B, H, W, C) -> logits (B, K)`: an
`nnx.Module`, `jax.tree_util.Partial(linen_model.apply, params)`, an Equinox
module, a plain function. A generator is anything with `decode` (and, when it
has one, `encode`), or a bare decode callable. Either may also be named by a
string: the folder of a cfajax checkpoint, or `package.module:factory`, whose
factory is called with no arguments and returns the model (the way ASGI
servers name an app).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from cfajax import _hashing
from cfajax._callables import as_pure_callable
from cfajax._checkpoint import load_model

_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_string(spec) -> bool:
  return isinstance(spec, str) and bool(_IMPORT_STRING.match(spec)) and not os.path.exists(spec)


@contextlib.contextmanager
def _working_directory_importable():
  """The working directory on `sys.path` (first, as `python -m` puts it) while in use.

  A console script's `sys.path` starts with the script's own folder instead,
  so without this `cfajax explain --classifier mymodel:build` could not
  import the user's `mymodel.py` where `python -m cfajax` could.
  """
  cwd = os.getcwd()
  present = any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path)
  if not present:
    sys.path.insert(0, cwd)
  try:
    yield
  finally:
    if not present and cwd in sys.path:
      sys.path.remove(cwd)


def load_model_spec(spec, what: str):
  """The model a string names: a cfajax checkpoint folder, or `module:factory`.

  The module of an import string may lie in the working directory, whether
  cfajax runs as the `cfajax` console script, as `python -m cfajax` or from
  Python.

  Raises:
    ValueError: an import string whose module or factory does not import,
      or whose factory fails.
    FileNotFoundError: a path that does not exist.
  """
  if is_import_string(spec):
    with _working_directory_importable():
      return _call_factory(spec, what)
  path = Path(spec)
  if not path.exists():
    raise FileNotFoundError(f"{what} {spec!r}: no checkpoint folder there, and not an import "
                            "string of the form package.module:factory")
  return load_model(path)


def _call_factory(spec: str, what: str):
  module_name, _, attribute = spec.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({e})") from e
  target = module
  for part in attribute.split("."):
    if not hasattr(target, part):
      raise ValueError(f"{what} {spec!r}: module {module_name!r} has no {attribute!r}")
    target = getattr(target, part)
  if not callable(target):
    raise ValueError(f"{what} {spec!r}: {attribute} is not a factory (not callable)")
  try:
    return target()
  except Exception as e:
    raise ValueError(f"{what} {spec!r}: the factory failed ({type(e).__name__}: {e})") from e


@dataclasses.dataclass(frozen=True)
class GeneratorParts:
  """A generator's decode, its encode when it has one, and its latent size when known."""

  decode: Callable
  encode: Callable | None
  latent_dim: int | None


def generator_parts(generator) -> GeneratorParts:
  """Splits a generator object (or a bare decode callable) into its parts."""
  decode = getattr(generator, "decode", None)
  if decode is None:
    if not callable(generator):
      raise ValueError(f"a generator needs a decode method or must be a callable decode; got "
                       f"{type(generator).__name__}")
    decode = generator
  encode = getattr(generator, "encode", None)
  latent_dim = getattr(generator, "latent_dim", None)
  config = getattr(generator, "config", None)
  if latent_dim is None and config is not None:
    latent_dim = getattr(config, "latent_dim", None)
  return GeneratorParts(decode, encode, None if latent_dim is None else int(latent_dim))


def callable_digest(fn, example: jax.ShapeDtypeStruct) -> str:
  """SHA-256 of what a model computes: its program on `example` and all its arrays.

  Two models with the same architecture and weights get the same digest in
  any process; a change of weights, closed-over constants or code changes
  it. (The program's text is that of this JAX version.)
  """
  pure = as_pure_callable(fn)
  closed = jax.make_jaxpr(lambda f, x: f(x))(pure, example)
  text = re.sub(r"0x[0-9a-f]+", "0x", str(closed.jaxpr))
  arrays = [c for c in closed.consts if hasattr(c, "dtype")]
  return _hashing.digest_json([text, _hashing.digest_tree(jax.tree_util.tree_leaves(pure)),
                               _hashing.digest_tree(arrays)])


def output_shape(fn, example: jax.ShapeDtypeStruct, what: str) -> tuple[int, ...]:
  """The shape `fn` gives for `example`, or a ValueError naming `what` failed."""
  try:
    out = jax.eval_shape(as_pure_callable(fn), example)
  except Exception as e:
    raise ValueError(f"{what} failed on inputs of shape {example.shape} "
                     f"{jnp.dtype(example.dtype).name}: {type(e).__name__}: {e}") from e
  if not hasattr(out, "shape"):
    raise ValueError(f"{what} returned {type(out).__name__}, not an array, for inputs of shape "
                     f"{example.shape}")
  return tuple(out.shape)


def output_width(fn, image_shape, what: str) -> int:
  """k, for a function of images (B, H, W, C) that gives (B, k): logits, statistics, ...

  Raises:
    ValueError: `fn` fails on two such images, or gives another shape.
  """
  shape = output_shape(fn, jax.ShapeDtypeStruct((2, *image_shape), jnp.float32), what)
  if len(shape) != 2 or shape[0] != 2:
    raise ValueError(f"{what} must map images (B, H, W, C) to (B, k); for B=2 it returned "
                     f"{shape}")
  return shape[1]


def describe(spec: Any) -> str:
  """How a model was given, for the summary."""
  if isinstance(spec, (str, os.PathLike)):
    return os.fspath(spec)
  return f"<{type(spec).__name__} from Python>"
