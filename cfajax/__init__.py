"""cfajax: counterfactual attacks and attributions for image classifiers, in JAX.

The whole public API:

Counterfactual attack
  counterfactual_attack(decode, classify, z, target, **options) -> AttackResult
  AttackResult, Status

Data (float32 NHWC images in [0, 1])
  ImageDataset(images, labels, attributes, attribute_names, ids, name)
  load_digits() -> ImageDataset
  load_mnist(data_dir=None, split="train") -> ImageDataset
  load_celeba(data_dir=None, split="train", image_size=64) -> ImageDataset
  split_dataset(dataset, num_test, seed=0) -> (train, test)
  read_idx(path, expected_magic=None) -> np.ndarray
"""

from cfajax._attack import AttackResult
from cfajax._attack import Status
from cfajax._attack import counterfactual_attack
from cfajax._data import ImageDataset
from cfajax._data import load_celeba
from cfajax._data import load_digits
from cfajax._data import load_mnist
from cfajax._data import read_idx
from cfajax._data import split_dataset

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "Status",
    "counterfactual_attack",
    # data
    "ImageDataset",
    "load_celeba",
    "load_digits",
    "load_mnist",
    "read_idx",
    "split_dataset",
]
