"""What every model shares: the generator as two callables, and the configs' checks and
JSON form."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax


class Generator(NamedTuple):
  """A generator as two JAX callables; `ConvVAE` has the same two methods.

  Attributes:
    encode: maps images (B, H, W, C) to latents (B, d), deterministically.
    decode: maps latents (B, d) to images (B, H, W, C).
  """

  encode: Callable[[jax.Array], jax.Array]
  decode: Callable[[jax.Array], jax.Array]


def _check_image_shape(image_shape) -> tuple[int, int, int]:
  shape = tuple(int(s) for s in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C) with positive sizes; got {image_shape}")
  return shape


def _check_widths(widths, name: str) -> tuple[int, ...]:
  widths = tuple(int(w) for w in widths)
  if not widths or min(widths) < 1:
    raise ValueError(f"{name} must be a non-empty sequence of positive ints; got {widths}")
  return widths


class _Config:
  """`to_dict`/`from_dict` for the frozen config dataclasses (JSON-safe)."""

  # dataclasses.fields: the subclasses are dataclasses.
  def to_dict(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}  # pyright: ignore[reportArgumentType]

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}  # pyright: ignore[reportArgumentType]
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected {sorted(names)}")
    return cls(**d)
