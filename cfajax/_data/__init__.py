"""Image datasets as host arrays: MNIST, CelebA and scikit-learn's digits.

Every loader returns an `ImageDataset` of float32 NHWC images in [0, 1]. The
data are read from local files in each dataset's standard layout, or, where no
folder is given, through tensorflow-datasets (imported only then).

Where the files are looked for, in order:
  1. the `data_dir` argument (the dataset's folder itself, or a folder holding
     it as `mnist/` or `celeba/`);
  2. `$CFAJAX_DATA_DIR/mnist` and `$CFAJAX_DATA_DIR/celeba`;
  3. tensorflow-datasets, which downloads (network needed the first time).

One source a module: `digits`, `mnist`, `celeba` and `folders` (images from
anywhere); `_dataset` the `ImageDataset` they return, `_files` where files are
looked for and how they are read, `_tfds` tensorflow-datasets.
"""

from cfajax._data._dataset import ImageDataset
from cfajax._data._dataset import split_dataset
from cfajax._data._files import CACHE_DIR_ENV
from cfajax._data._files import DATA_DIR_ENV
from cfajax._data._files import default_cache_dir
from cfajax._data.celeba import CELEBA_ATTR_FILE
from cfajax._data.celeba import CELEBA_ATTRIBUTE_NAMES
from cfajax._data.celeba import CELEBA_CROP_FRACTION
from cfajax._data.celeba import CELEBA_PARTITION_FILE
from cfajax._data.celeba import CELEBA_SPLITS
from cfajax._data.celeba import load_celeba
from cfajax._data.celeba import preprocess_face
from cfajax._data.celeba import read_celeba_attributes
from cfajax._data.celeba import read_celeba_partition
from cfajax._data.digits import load_digits
from cfajax._data.folders import IMAGE_SUFFIXES
from cfajax._data.folders import TFDS_PREFIX
from cfajax._data.folders import as_image_dataset
from cfajax._data.folders import load_image_folder
from cfajax._data.folders import load_tfds_images
from cfajax._data.folders import read_images
from cfajax._data.mnist import IDX_IMAGES_MAGIC
from cfajax._data.mnist import IDX_LABELS_MAGIC
from cfajax._data.mnist import MNIST_FILES
from cfajax._data.mnist import load_mnist
from cfajax._data.mnist import read_idx

__all__ = [
    "CACHE_DIR_ENV", "CELEBA_ATTRIBUTE_NAMES", "CELEBA_ATTR_FILE", "CELEBA_CROP_FRACTION",
    "CELEBA_PARTITION_FILE", "CELEBA_SPLITS", "DATA_DIR_ENV", "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC", "IMAGE_SUFFIXES", "MNIST_FILES",
    "TFDS_PREFIX", "ImageDataset", "as_image_dataset", "default_cache_dir", "load_celeba",
    "load_digits", "load_image_folder", "load_mnist", "load_tfds_images", "preprocess_face",
    "read_celeba_attributes", "read_celeba_partition", "read_idx", "read_images", "split_dataset",
]
