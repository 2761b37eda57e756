"""Attribute tables: named binary labels for images or latents, from which the probes learn.

An `AttributeTable` holds labels for a set of images (encoded, or inverted,
with the explanation's generator) or directly for latents. It comes from
arrays, from a CSV file with a header and one row per image file, from a
dataset with labelled attributes (CelebA), or from descriptors computed from
the images (`descriptor_tables`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from cfajax import _array_checks
from cfajax import _data
from cfajax import _descriptors

_TRUE = {"1", "+1", "true", "yes"}
_FALSE = {"0", "-1", "false", "no"}


@dataclasses.dataclass(frozen=True, eq=False)
class AttributeTable:
  """Binary labels of A named attributes for m images or m latents.

  Attributes:
    names: the A attribute names.
    values: (m, A) uint8 in {0, 1}.
    images: (m, H, W, C) float32 images the labels describe, or None.
    latents: (m, d) latents the labels describe, or None. Exactly one of
      `images` and `latents` is given.
    files: (m,) str image file names, where the images came from files.
    name: a short description.
  """

  names: tuple[str, ...]
  values: np.ndarray
  images: np.ndarray | None = None
  latents: np.ndarray | None = None
  files: np.ndarray | None = None
  name: str = "attributes"

  def __post_init__(self):
    names = tuple(str(n) for n in self.names)
    object.__setattr__(self, "names", names)
    values = np.asarray(self.values)
    if values.ndim != 2 or values.shape[1] != len(names):
      raise ValueError(f"{self.name}: values must be (m, {len(names)}) for {len(names)} names; "
                       f"got shape {values.shape}")
    if not names:
      raise ValueError(f"{self.name}: no attributes")
    if len(set(names)) != len(names):
      twice = sorted({n for n in names if names.count(n) > 1})
      raise ValueError(f"{self.name}: attribute names repeat: {twice}")
    if not np.all(np.isin(values, (0, 1))):
      raise ValueError(f"{self.name}: values must be 0 or 1; got {sorted(np.unique(values))[:5]}")
    object.__setattr__(self, "values", values.astype(np.uint8))
    if (self.images is None) == (self.latents is None):
      raise ValueError(f"{self.name}: give images or latents (exactly one)")
    for field in ("images", "latents", "files"):
      value = getattr(self, field)
      if value is not None and len(value) != len(values):
        raise ValueError(f"{self.name}: {field} has {len(value)} rows for {len(values)} rows of "
                         "values")
    if self.images is not None:
      object.__setattr__(self, "images", _data.as_image_dataset(self.images).images)
    if self.latents is not None:
      object.__setattr__(self, "latents",
                         _array_checks.latents(self.latents, f"{self.name} latents"))

  def __len__(self) -> int:
    return len(self.values)

  def subset(self, rows, name: str | None = None) -> AttributeTable:
    """The rows at `rows` (indices, a mask or a slice)."""
    take = lambda a: None if a is None else a[rows]
    return dataclasses.replace(self, values=self.values[rows], images=take(self.images),
                               latents=take(self.latents), files=take(self.files),
                               name=self.name if name is None else name)

  def columns(self, keep) -> AttributeTable:
    """Only the attributes at column indices `keep`."""
    keep = list(keep)
    return dataclasses.replace(self, names=tuple(self.names[i] for i in keep),
                               values=self.values[:, keep])

  def split(self, fraction: float, seed: int = 0) -> tuple[AttributeTable, AttributeTable]:
    """(rest, held out): a seeded random `fraction` of the rows held out."""
    m = len(self)
    held = int(round(fraction * m))
    if not 0 < held < m:
      raise ValueError(f"{self.name}: cannot hold out {fraction:.0%} of {m} rows")
    order = np.random.default_rng(seed).permutation(m)
    return (self.subset(np.sort(order[held:]), f"{self.name} [fit]"),
            self.subset(np.sort(order[:held]), f"{self.name} [held out]"))

  @classmethod
  def from_dataset(cls, dataset: _data.ImageDataset) -> AttributeTable:
    """A dataset's labelled attributes (e.g. CelebA's 40) for its images."""
    if dataset.attributes is None:
      raise ValueError(f"{dataset.name or 'the dataset'} has no attribute labels")
    return cls(dataset.attribute_names, dataset.attributes, images=dataset.images,
               files=dataset.files, name=f"{dataset.name} attributes")

  @classmethod
  def from_csv(cls, path, image_dir=None, *, image_size: int | None = None,
               progress: bool = False) -> AttributeTable:
    """Reads a CSV file: a header, then one row per image file.

    The first column names an image file; every other column is an attribute
    whose values are 0/1, -1/+1 (CelebA's convention) or false/true. A
    relative file path is read relative to the CSV's own folder (not the
    working directory), or to `image_dir` when one is given.

    Raises:
      FileNotFoundError: the CSV, or image files it names, do not exist.
      ValueError: no header or rows, a row of the wrong length, a value that
        is not binary, or a file listed twice.
    """
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"no attribute CSV at {path}")
    with open(path, newline="") as f:
      rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if len(rows) < 2:
      raise ValueError(f"{path}: expected a header (file, attribute names...) and rows")
    header = [cell.strip() for cell in rows[0]]
    names = header[1:]
    if not names:
      raise ValueError(f"{path}: the header names no attribute after the file column")
    files, values = [], []
    for line, row in enumerate(rows[1:], start=2):
      if len(row) != len(header):
        raise ValueError(f"{path}: line {line} has {len(row)} fields; the header has "
                         f"{len(header)}")
      files.append(row[0].strip())
      parsed = []
      for name, cell in zip(names, row[1:], strict=True):
        text = cell.strip().lower()
        if text not in _TRUE | _FALSE:
          raise ValueError(f"{path}: line {line}, {name}: {cell.strip()!r} is not a binary "
                           "value (0/1, -1/1 or false/true)")
        parsed.append(text in _TRUE)
      values.append(parsed)
    seen = {}
    for line, file in enumerate(files, start=2):
      if file in seen:
        raise ValueError(f"{path}: {file} is listed twice (lines {seen[file]} and {line})")
      seen[file] = line
    folder = Path(image_dir) if image_dir is not None else path.parent
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
      raise FileNotFoundError(f"{path} names {len(missing)} image file(s) not in {folder}, e.g. "
                              f"{', '.join(missing[:3])}")
    images = _data.read_images([folder / f for f in files], image_size, progress=progress)
    return cls(tuple(names), np.array(values, np.uint8), images=images, files=np.array(files),
               name=f"{path.name} ({len(files)} images)")


def as_attribute_table(attributes, *, image_size: int | None = None,
                       progress: bool = False) -> AttributeTable:
  """An `AttributeTable`, or a CSV path read by `AttributeTable.from_csv`."""
  if isinstance(attributes, AttributeTable):
    return attributes
  if isinstance(attributes, (str, os.PathLike)):
    return AttributeTable.from_csv(attributes, image_size=image_size, progress=progress)
  raise ValueError("attributes must be an AttributeTable or the path of an attribute CSV; got "
                   f"{type(attributes).__name__}")


def select_probe_attributes(names, attributes, explained, *, exclude=(),
                            max_correlation: float = 0.75):
  """Which labelled attributes get probes when `explained` ones are classified.

  A probe for the classified attribute itself, or for a near-duplicate of it,
  would "explain" the decision by restating it. Left out are the `explained`
  attributes, those in `exclude`, and every attribute whose labels correlate
  with an explained one beyond `max_correlation` in absolute value (Pearson's
  r of the {0, 1} labels, e.g. CelebA's Wearing_Lipstick with Male, r = -0.79
  on the first 10,000 faces).

  Args:
    names: the A attribute names.
    attributes: (n, A) labels in {0, 1}.
    explained: names of the classified attributes.
    exclude: further names to leave out.
    max_correlation: the |r| above which an attribute is a near-duplicate.

  Returns:
    `(keep, excluded)`: the kept column indices, and `{name: reason}` for the
    rest.

  Raises:
    ValueError: a name in `explained` or `exclude` is not in `names`.
  """
  names = list(names)
  unknown = [n for n in (*explained, *exclude) if n not in names]
  if unknown:
    raise ValueError(f"unknown attributes {unknown}; the dataset has {names}")
  labels = np.asarray(attributes, np.float64)
  excluded = {n: "explained" for n in explained}
  excluded.update({n: "excluded" for n in exclude if n not in excluded})
  centred = labels - labels.mean(axis=0)
  norms = np.sqrt((centred ** 2).sum(axis=0))
  for name in explained:
    i = names.index(name)
    with np.errstate(invalid="ignore", divide="ignore"):
      r = centred.T @ centred[:, i] / (norms * norms[i])
    for j, value in enumerate(r):
      if names[j] not in excluded and np.isfinite(value) and abs(value) > max_correlation:
        excluded[names[j]] = f"near-duplicate of {name} (r = {value:+.2f})"
  keep = [j for j, n in enumerate(names) if n not in excluded]
  return keep, excluded


def descriptor_tables(*datasets: _data.ImageDataset):
  """Morphometric descriptor tables for digit images, binarised at the first set's medians.

  Returns:
    `(tables, thresholds)`: one `AttributeTable` per dataset, and
    `{name: threshold}`.
  """
  values = [_descriptors.digit_descriptors(d.images) for d in datasets]
  _, thresholds = _descriptors.binarize_descriptors(values[0])
  names = _descriptors.DESCRIPTOR_ATTRIBUTE_NAMES
  tables = [AttributeTable(names, _descriptors.binarize_descriptors(v, thresholds)[0],
                           images=d.images, files=d.files, name=f"{d.name} descriptors")
            for d, v in zip(datasets, values, strict=True)]
  return tables, dict(zip(names, thresholds.tolist(), strict=True))
