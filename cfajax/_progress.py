"""Progress bars: one way for every long loop to show, or advance, a bar.

Every long-running function takes `progress`: False (no bar), True (a bar of
its own, closed when it returns), or an existing tqdm-like bar (anything with
`update(count)`) that it advances and leaves open, so a caller can show one bar
over several calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm


@contextlib.contextmanager
def progress_bar(progress, *, total: int, desc: str, unit: str,
                 leave: bool = True) -> Iterator[Any]:
  """The bar to advance (None without one); a bar made here is closed on exit.

  Args:
    progress: False, True, or a bar with `update(count)`.
    total, desc, unit, leave: the new bar's, when `progress` is True.
  """
  if hasattr(progress, "update"):
    yield progress
  elif progress:
    bar = tqdm(total=total, desc=desc, unit=unit, leave=leave)
    try:
      yield bar
    finally:
      bar.close()
  else:
    yield None


def tracked(items: Iterable, progress: bool, *, desc: str, unit: str,
            total: int | None = None) -> Iterable:
  """`items`, behind a bar that advances as they are consumed when `progress`."""
  return tqdm(items, total=total, desc=desc, unit=unit) if progress else items
