"""cfajax: counterfactual attacks and attributions for image classifiers, in JAX.

The whole public API:

The dataset-wide explanation (the main job; also `cfajax explain`)
  explain(config=None, *, classifier=, generator=, images=, attributes=, restart=False,
          **options) -> summary dict; writes results to config.out, resumable
    any JAX classifier and generator over any images (or a preset: digits, mnist, celeba)
  ExplainConfig                     every option of a run, with defaults
  AttributeTable(names, values, images=|latents=)   labels the probes learn from;
    .from_csv(path), .from_dataset(dataset), .subset, .columns, .split
  select_probe_attributes(names, attributes, explained, *, exclude, max_correlation)
    -> (kept columns, {left out: why})   no probes for near-duplicates of the target
  select_output(classifier, attribute) -> (B, 1) classifier of one sigmoid head

Counterfactual attack
  counterfactual_attack(decode, classify, z, target, **options) -> AttackResult
  AttackResult, Status
  local_mesh(devices=None) -> Mesh      the device mesh the attack shards over

Latent inversion (for generators without an encoder, e.g. GANs)
  invert(decode, images, *, encode=None, latent_dim=None, features=None, starts, ...)
    -> InversionResult: .z, .loss, .pixel_mse, .steps, .status, .start, .start_losses

Models (Flax NNX; any pair of JAX callables encode/decode is a generator)
  Generator(encode, decode)
  ConvVAE(config, rngs=)            .encode .encode_stats .decode .reconstruct .loss
  Classifier(config, rngs=)         .__call__ -> logits  .probabilities .predict .loss
  VAEConfig, ClassifierConfig       frozen; .to_dict() / .from_dict(d)
  ConvGAN(config, rngs=)            .decode .discriminate  (no encoder: latents by invert)
  GANConfig
  build_model(kind, config, seed=0) -> ConvVAE | Classifier | ConvGAN

Training and evaluation
  train_vae(vae, train, test=None, **options) -> (vae, history)
  train_classifier(classifier, train, test=None, **options) -> (classifier, history)
  train_gan(gan, train, test=None, **options) -> (gan, history)   non-saturating + R1
  evaluate_gan(gan, data) -> dict (discriminator on real/fake, inversion error)
  evaluate_vae(vae, data) -> dict;  evaluate_classifier(classifier, dataset) -> dict
  reconstruct(generator, images) -> np.ndarray

Checkpoints (orbax weights + JSON config)
  save_model(path, model, metrics=None) -> Path
  load_model(path) -> ConvVAE | Classifier | ConvGAN   verified against the checksums it records
  read_checkpoint_info(path) -> dict

Data (float32 NHWC images in [0, 1])
  ImageDataset(images, labels, attributes, attribute_names, ids, name)
  load_digits() -> ImageDataset
  load_image_folder(folder, image_size=None) -> ImageDataset   every image file, name order
  load_mnist(data_dir=None, split="train") -> ImageDataset
  load_celeba(data_dir=None, split="train", image_size=64) -> ImageDataset
  split_dataset(dataset, num_test, seed=0) -> (train, test)
  read_idx(path, expected_magic=None) -> np.ndarray

Attribute probes (one logistic regression per attribute on latents)
  fit_probes(z, attributes, *, C, class_weight, standardize, validation, ...) -> Probes
  Probes: .predict_proba(z), .predict_logit(z), .coef, .intercept, .names,
          diagnostics (.converged, .grad_norm, .iterations), .val_accuracy, .val_auc

Attributions
  local_attributions(probes, z, z_cf) -> (n, A) phi = g(z') - g(z)
  global_attributions(phi, original_prob, *, success, names, ...) -> GlobalAttributions
  GlobalAttributions: .psi, .stderr, .ci_low, .ci_high, .ranking, .top(k), .to_dict()

Counterfactual quality (the `cfajax.metrics` module)
  validity(result), proximity(cf, starts, ...), oracle_agreement(oracle, cf, target),
  reconstruction_error(generator, x), realism(generator, cf, real),
  pixel_attack(classify, x, target, **options) (the adversarial baseline),
  counterfactual_report(result, counterfactuals=, starts=, ...) -> dict

Digit descriptors (Morpho-MNIST-like attributes computed from images)
  digit_descriptors(images, *, threshold, upsample) -> (n, 6) values, DESCRIPTOR_NAMES
  binarize_descriptors(values, thresholds=None) -> ((n, 6) {0, 1}, thresholds),
    DESCRIPTOR_ATTRIBUTE_NAMES
"""

from cfajax import metrics
from cfajax._attack import counterfactual_attack
from cfajax._attributions import GlobalAttributions
from cfajax._attributions import global_attributions
from cfajax._attributions import local_attributions
from cfajax._checkpoint import load_model
from cfajax._checkpoint import read_checkpoint_info
from cfajax._checkpoint import save_model
from cfajax._data import ImageDataset
from cfajax._data import load_celeba
from cfajax._data import load_digits
from cfajax._data import load_image_folder
from cfajax._data import load_mnist
from cfajax._data import read_idx
from cfajax._data import split_dataset
from cfajax._attribute_tables import AttributeTable
from cfajax._attribute_tables import select_probe_attributes
from cfajax._explain import ExplainConfig
from cfajax._explain import explain
from cfajax._descriptors import DESCRIPTOR_ATTRIBUTE_NAMES
from cfajax._descriptors import DESCRIPTOR_NAMES
from cfajax._descriptors import binarize_descriptors
from cfajax._descriptors import digit_descriptors
from cfajax._inversion import InversionResult
from cfajax._inversion import invert
from cfajax._loop import AttackResult
from cfajax._loop import Status
from cfajax._models import Classifier
from cfajax._models import ClassifierConfig
from cfajax._models import ConvGAN
from cfajax._models import ConvVAE
from cfajax._models import GANConfig
from cfajax._models import Generator
from cfajax._models import VAEConfig
from cfajax._models import build_model
from cfajax._models import select_output
from cfajax._probes import Probes
from cfajax._probes import fit_probes
from cfajax._scheduler import local_mesh
from cfajax._train import evaluate_classifier
from cfajax._train import evaluate_gan
from cfajax._train import evaluate_vae
from cfajax._train import reconstruct
from cfajax._train import train_classifier
from cfajax._train import train_gan
from cfajax._train import train_vae

__version__ = "0.1.0"

__all__ = [
    # the dataset-wide explanation
    "AttributeTable",
    "ExplainConfig",
    "explain",
    "select_output",
    "select_probe_attributes",
    # attack
    "AttackResult",
    "Status",
    "counterfactual_attack",
    "local_mesh",
    # inversion
    "InversionResult",
    "invert",
    # models
    "Classifier",
    "ClassifierConfig",
    "ConvGAN",
    "ConvVAE",
    "GANConfig",
    "Generator",
    "VAEConfig",
    "build_model",
    # training
    "evaluate_classifier",
    "evaluate_gan",
    "evaluate_vae",
    "reconstruct",
    "train_classifier",
    "train_gan",
    "train_vae",
    # checkpoints
    "load_model",
    "read_checkpoint_info",
    "save_model",
    # data
    "ImageDataset",
    "load_celeba",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "read_idx",
    "split_dataset",
    # probes and attributions
    "GlobalAttributions",
    "Probes",
    "fit_probes",
    "global_attributions",
    "local_attributions",
    # counterfactual quality
    "metrics",
    # descriptors
    "DESCRIPTOR_ATTRIBUTE_NAMES",
    "DESCRIPTOR_NAMES",
    "binarize_descriptors",
    "digit_descriptors",
]
