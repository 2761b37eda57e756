"""Checks of user-given scalar options, done in Python before anything is traced or run.

Each check names the option, says what was expected and what came, so that a
wrong type or range is a `ValueError` the user can act on, never an error from
deep inside NumPy or JAX. Pure Python and NumPy: the command line and the
attack values check their options without loading JAX (arrays and
precisions are checked in `_array_checks`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

INT32_MAX = 2**31 - 1


def _describe(value) -> str:
  return f"{type(value).__name__} {value!r}"


def number(name: str, value, *, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> float:
  """`value` as a finite float in the given range.

  Raises:
    ValueError: `value` is not a real number (a string, a bool, None, an
      array), is not finite, or is out of range.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a number; got {_describe(value)}")
  value = float(value)
  below = value <= low if low_open else value < low
  above = value >= high if high_open else value > high
  if not math.isfinite(value) or below or above:
    raise ValueError(f"{name} must be {_range(low, high, low_open, high_open)}; got {value}")
  return value


def integer(name: str, value, *, low: int | None = None, high: int | None = INT32_MAX) -> int:
  """`value` as an int in [low, high] (a float with an integral value is accepted).

  Raises:
    ValueError: `value` is not an integer, or is out of range.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be an integer; got {_describe(value)}")
  if not isinstance(value, numbers.Integral):
    if not (math.isfinite(value) and float(value).is_integer()):
      raise ValueError(f"{name} must be an integer; got {value!r}")
  value = int(value)  # pyright: ignore[reportArgumentType]  (typeshed: no int() of a Real)
  if (low is not None and value < low) or (high is not None and value > high):
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(f"{name} must be an integer in [{lo}, {hi}]; got {value}")
  return value


def choice(name: str, value, choices) -> str:
  """`value` if it is one of `choices` (strings)."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got "
                     f"{_describe(value)}")
  return value


def _range(low, high, low_open, high_open) -> str:
  if math.isinf(low) and math.isinf(high):
    return "a finite number"
  if math.isinf(high):
    return f"a finite number {'>' if low_open else '>='} {low:g}"
  if math.isinf(low):
    return f"a finite number {'<' if high_open else '<='} {high:g}"
  return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
