"""cfajax: counterfactual attacks and attributions for image classifiers, in JAX.

The whole public API:

Counterfactual attack
  counterfactual_attack(decode, classify, z, target, **options) -> AttackResult
  AttackResult, Status

Models (Flax NNX; any pair of JAX callables encode/decode is a generator)
  Generator(encode, decode)
  ConvVAE(config, rngs=)            .encode .encode_stats .decode .reconstruct .loss
  Classifier(config, rngs=)         .__call__ -> logits  .probabilities .predict .loss
  VAEConfig, ClassifierConfig       frozen; .to_dict() / .from_dict(d)
  build_model(kind, config, seed=0) -> ConvVAE | Classifier

Training and evaluation
  train_vae(vae, train, test=None, **options) -> (vae, history)
  train_classifier(classifier, train, test=None, **options) -> (classifier, history)
  evaluate_vae(vae, data) -> dict;  evaluate_classifier(classifier, dataset) -> dict
  reconstruct(generator, images) -> np.ndarray

Checkpoints (orbax weights + JSON config)
  save_model(path, model, metrics=None) -> Path
  load_model(path) -> ConvVAE | Classifier
  read_checkpoint_info(path) -> dict

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
from cfajax._checkpoint import load_model
from cfajax._checkpoint import read_checkpoint_info
from cfajax._checkpoint import save_model
from cfajax._data import ImageDataset
from cfajax._data import load_celeba
from cfajax._data import load_digits
from cfajax._data import load_mnist
from cfajax._data import read_idx
from cfajax._data import split_dataset
from cfajax._models import Classifier
from cfajax._models import ClassifierConfig
from cfajax._models import ConvVAE
from cfajax._models import Generator
from cfajax._models import VAEConfig
from cfajax._models import build_model
from cfajax._train import evaluate_classifier
from cfajax._train import evaluate_vae
from cfajax._train import reconstruct
from cfajax._train import train_classifier
from cfajax._train import train_vae

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "Status",
    "counterfactual_attack",
    # models
    "Classifier",
    "ClassifierConfig",
    "ConvVAE",
    "Generator",
    "VAEConfig",
    "build_model",
    # training
    "evaluate_classifier",
    "evaluate_vae",
    "reconstruct",
    "train_classifier",
    "train_vae",
    # checkpoints
    "load_model",
    "read_checkpoint_info",
    "save_model",
    # data
    "ImageDataset",
    "load_celeba",
    "load_digits",
    "load_mnist",
    "read_idx",
    "split_dataset",
]
