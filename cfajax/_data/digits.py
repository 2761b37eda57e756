"""scikit-learn's 8x8 digits: the embedded dataset that needs no download."""

from __future__ import annotations

import numpy as np

from cfajax._data._dataset import ImageDataset


def load_digits() -> ImageDataset:
  """The 1,797 8x8 digits shipped with scikit-learn, as (n, 8, 8, 1) in [0, 1].

  No download: the quick-start and test dataset. Pixel values 0..16 are
  divided by 16. Split with `split_dataset(load_digits(), 0.2)`.
  """
  from sklearn.datasets import load_digits as sklearn_digits
  digits = sklearn_digits()
  # scikit-learn's annotations allow a tuple (return_X_y=True); this is a Bunch.
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # pyright: ignore[reportAttributeAccessIssue]
  return ImageDataset(images, digits.target.astype(np.int32),  # pyright: ignore[reportAttributeAccessIssue]
                      ids=np.arange(len(images), dtype=np.int64), name="digits")
