"""`ImageDataset`, what every loader returns, and its seeded train/test split."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Images with their labels and named binary attributes, on the host.

  Attributes:
    images: (n, H, W, C) float32 in [0, 1].
    labels: (n,) int32 class labels, or None where the dataset has none
      (CelebA).
    attributes: (n, A) uint8 in {0, 1}, or None.
    attribute_names: the A attribute names, in column order.
    ids: (n,) int64 position of each example in its source: the row of the
      IDX file (MNIST), the number in the file name (CelebA: 1 for
      000001.jpg), the index in scikit-learn's array (digits); or None.
    name: a short description, e.g. "mnist/train".
    files: (n,) str file name of each image, relative to its folder, for
      images read from files (`load_image_folder`); or None.
  """

  images: np.ndarray
  labels: np.ndarray | None = None
  attributes: np.ndarray | None = None
  attribute_names: tuple[str, ...] = ()
  ids: np.ndarray | None = None
  name: str = ""
  files: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.images)
    if self.images.ndim != 4:
      raise ValueError(f"images must be (n, H, W, C); got shape {self.images.shape}")
    for field in ("labels", "attributes", "ids", "files"):
      value = getattr(self, field)
      if value is not None and len(value) != n:
        raise ValueError(f"{field} has {len(value)} rows but there are {n} images")
    if self.attributes is not None and self.attributes.shape[1:] != (len(self.attribute_names),):
      raise ValueError(
          f"attributes have shape {self.attributes.shape} but {len(self.attribute_names)} "
          "attribute_names were given")

  def __len__(self) -> int:
    return len(self.images)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def subset(self, indices, name: str | None = None) -> ImageDataset:
    """The examples at `indices` (an index array, a boolean mask or a slice)."""
    take = lambda a: None if a is None else a[indices]
    return dataclasses.replace(
        self, images=self.images[indices], labels=take(self.labels),
        attributes=take(self.attributes), ids=take(self.ids), files=take(self.files),
        name=self.name if name is None else name)

  def with_images(self, images, name: str | None = None) -> ImageDataset:
    """The same examples with other images (e.g. reconstructions), labels kept."""
    return dataclasses.replace(self, images=np.asarray(images, np.float32),
                               name=self.name if name is None else name)

  def attribute(self, name: str) -> np.ndarray:
    """The (n,) column of one attribute."""
    # attribute_index raises KeyError where there are no attributes.
    return self.attributes[:, self.attribute_index(name)]  # pyright: ignore[reportOptionalSubscript]

  def attribute_index(self, name: str) -> int:
    if self.attributes is None or name not in self.attribute_names:
      raise KeyError(f"{self.name or 'dataset'} has no attribute {name!r}; it has "
                     f"{list(self.attribute_names) or 'none'}")
    return self.attribute_names.index(name)


def split_dataset(
    dataset: ImageDataset, num_test: int | float, *, seed: int | None = 0,
) -> tuple[ImageDataset, ImageDataset]:
  """Splits a dataset into (train, test), deterministically.

  Args:
    dataset: the examples to split.
    num_test: the number of test examples, or a fraction of the dataset in
      (0, 1).
    seed: the examples are shuffled by `np.random.default_rng(seed)` before
      the last `num_test` are taken as the test set; `None` keeps the order,
      so the test set is the last `num_test` examples.

  Returns:
    `(train, test)`, disjoint, together the whole dataset.
  """
  n = len(dataset)
  if isinstance(num_test, float) and 0 < num_test < 1:
    num_test = int(round(num_test * n))
  if int(num_test) != num_test or not 0 < num_test < n:
    raise ValueError(f"num_test must be in (0, {n}) or a fraction in (0, 1); got {num_test}")
  order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
  cut = n - int(num_test)
  base = dataset.name or "dataset"
  return (dataset.subset(np.sort(order[:cut]), f"{base}[train {cut}]"),
          dataset.subset(np.sort(order[cut:]), f"{base}[test {n - cut}]"))
