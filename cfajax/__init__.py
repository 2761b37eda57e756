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
  attacks.LatentAttack(threshold, optimizer, step_size, ...)   what makes each
    counterfactual, for explain(attack=...): also attacks.PixelAttack, attacks.DataFreeAttack

Counterfactual attack
  counterfactual_attack(decode, classify, z, target, **options) -> AttackResult
  AttackResult, Status
  TrustRegion(grow, shrink, good, poor, overshoot)   the default step rule: scale-free ascent along
    the gradient (optimizer="ascent" is the paper's plain update)
  local_mesh(devices=None) -> Mesh      the device mesh the attack shards over

Counterfactuals without a generator (DISC-style deep inversion)
  data_free_attack(classify, images, target, *, prior="implicit"|"pixels", progressive,
                   tv_weight, l2_weight, proximity_weight, statistics=, manifold=, ...)
    -> DataFreeResult: .images, .steps, .status, .initial_prob, .final_prob, .success
  DUQ(config, rngs=), DUQConfig     certainty near class centroids: DISC's manifold model
  train_duq(duq, train, test=None, **options) -> (duq, history);  evaluate_duq(duq, data)

Counterfactuals in one forward pass (Bischof et al.'s translation GAN)
  Translator(config, rngs=), TranslatorConfig   .translate(x, target) .fakeness(x) .__call__
  train_translator(translator, train, test=None, **options) -> (translator, history)
  evaluate_translator(translator, data) -> dict (critic accuracy, flips, fakeness, change)

Robustness
  pgd_attack(classify, images, labels, *, epsilon, norm="linf"|"l2", steps, ...) -> images
  robust_accuracy(classify, images, labels, **pgd_options) -> {"clean", "robust"}

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
  UNet(config, rngs=), UNetConfig   the DDPM-family noise predictor (diffusers' UNet2DModel)
  DiffusionGenerator(unet, schedule, steps=20, depth=0.5, remat=True)
                                    latents: noisy images at an edit depth (DDIM both ways);
                                    .with_edit(steps=, depth=) .config -> DiffusionConfig
  NoiseSchedule(...)                DDPM's betas with DDIM's options, as diffusers names them
  load_diffusers(folder, steps=, depth=) -> DiffusionGenerator   a diffusers UNet2DModel
                                    checkpoint (safetensors), read without PyTorch
  build_model(kind, config, seed=0) -> ConvVAE | Classifier | ConvGAN | DUQ | Translator
                                    | DiffusionGenerator
  conv_general_dilated              lax's, with gradients XLA's CPU runs fast inside loops;
                                    pass it to nnx.Conv(..., conv_general_dilated=)

Training and evaluation
  train_vae(vae, train, test=None, **options) -> (vae, history)
  train_classifier(classifier, train, test=None, **options) -> (classifier, history)
  train_gan(gan, train, test=None, **options) -> (gan, history)   non-saturating + R1
  evaluate_gan(gan, data) -> dict (discriminator on real/fake, inversion error)
  evaluate_vae(vae, data) -> dict;  evaluate_classifier(classifier, dataset) -> dict
  train_diffusion(model, train, test=None, **options) -> (model, history)   epsilon
                                    objective, EMA weights kept
  evaluate_diffusion(model, data) -> dict (held-out epsilon loss, reconstruction MSE)
  reconstruct(generator, images) -> np.ndarray

Checkpoints (orbax weights + JSON config)
  save_model(path, model, metrics=None) -> Path
  load_model(path) -> any model above   verified against the checksums it records
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
  global_attributions(phi, original_prob, *, success, names, refits=, ...) -> GlobalAttributions
  GlobalAttributions: .psi, .stderr, .ci_low, .ci_high, .p_value, .p_adjusted, .significant,
    .ranking, .top(k), .to_dict()
  probe_refits(z_fit, attributes, z, z_cf, original_prob, *, num_permutations, num_bootstrap,
               **probe_options) -> ProbeRefits(null, bootstrap)   psi with probes refitted
    to permuted labels (each attribute's p-value) and to resampled tables (its interval)

Counterfactual quality (the `cfajax.metrics` module)
  validity(result), proximity(cf, starts, ...), oracle_agreement(oracle, cf, target),
  reconstruction_error(generator, x), realism(generator, cf, real),
  pixel_attack(classify, x, target, **options) (the adversarial baseline),
  frechet_distance(features, images, reference) (realism in a network's features),
  counterfactual_report(result, counterfactuals=, starts=, ...) -> dict

Saliency maps (the `cfajax.saliency` module)
  counterfactual_saliency(starts, counterfactuals, sigma=) -> (n, H, W) smoothed |x' - start|
  gradient_saliency(classify, images, target), integrated_gradients(classify, images, target)
  saliency_mask(maps, fraction=), iou(mask, truth), pointing_game(maps, truth), smooth(maps, sigma)

Digit descriptors (Morpho-MNIST-like attributes computed from images)
  digit_descriptors(images, *, threshold, upsample) -> (n, 6) values, DESCRIPTOR_NAMES
  binarize_descriptors(values, thresholds=None) -> ((n, 6) {0, 1}, thresholds),
    DESCRIPTOR_ATTRIBUTE_NAMES
"""

import importlib

# The public names and the modules that define them. Importing cfajax imports
# none of them (PEP 562): `cfajax --help` and `import cfajax` stay fast, and
# JAX is loaded on first use of a name that needs it.
_EXPORTS = {
    "counterfactual_attack": "cfajax._attack",
    "GlobalAttributions": "cfajax._attributions",
    "global_attributions": "cfajax._attributions",
    "local_attributions": "cfajax._attributions",
    "ProbeRefits": "cfajax._significance",
    "probe_refits": "cfajax._significance",
    "load_model": "cfajax._checkpoint",
    "read_checkpoint_info": "cfajax._checkpoint",
    "save_model": "cfajax._checkpoint",
    "ImageDataset": "cfajax._data",
    "load_celeba": "cfajax._data",
    "load_digits": "cfajax._data",
    "load_image_folder": "cfajax._data",
    "load_mnist": "cfajax._data",
    "read_idx": "cfajax._data",
    "split_dataset": "cfajax._data",
    "AttributeTable": "cfajax._attribute_tables",
    "select_probe_attributes": "cfajax._attribute_tables",
    "ExplainConfig": "cfajax._explain_config",
    "explain": "cfajax._explain",
    "DESCRIPTOR_ATTRIBUTE_NAMES": "cfajax._descriptors",
    "DESCRIPTOR_NAMES": "cfajax._descriptors",
    "binarize_descriptors": "cfajax._descriptors",
    "digit_descriptors": "cfajax._descriptors",
    "DataFreeResult": "cfajax._data_free",
    "data_free_attack": "cfajax._data_free",
    "InversionResult": "cfajax._inversion",
    "invert": "cfajax._inversion",
    "AttackResult": "cfajax._loop",
    "Status": "cfajax._loop",
    "Classifier": "cfajax._models",
    "conv_general_dilated": "cfajax._conv",
    "ClassifierConfig": "cfajax._models",
    "ConvGAN": "cfajax._models",
    "ConvVAE": "cfajax._models",
    "DUQ": "cfajax._models",
    "DUQConfig": "cfajax._models",
    "GANConfig": "cfajax._models",
    "Translator": "cfajax._models",
    "TranslatorConfig": "cfajax._models",
    "Generator": "cfajax._models",
    "UNet": "cfajax._models",
    "UNetConfig": "cfajax._models",
    "DiffusionConfig": "cfajax._models",
    "DiffusionGenerator": "cfajax._models",
    "NoiseSchedule": "cfajax._models",
    "load_diffusers": "cfajax._diffusers",
    "VAEConfig": "cfajax._models",
    "build_model": "cfajax._models",
    "select_output": "cfajax._models",
    "pgd_attack": "cfajax._pgd",
    "robust_accuracy": "cfajax._pgd",
    "Probes": "cfajax._probes",
    "fit_probes": "cfajax._probes",
    "local_mesh": "cfajax._scheduler",
    "TrustRegion": "cfajax._steps",
    "evaluate_classifier": "cfajax._train",
    "evaluate_duq": "cfajax._train",
    "evaluate_gan": "cfajax._train",
    "evaluate_translator": "cfajax._train",
    "evaluate_vae": "cfajax._train",
    "evaluate_diffusion": "cfajax._train",
    "train_diffusion": "cfajax._train",
    "reconstruct": "cfajax._train",
    "train_classifier": "cfajax._train",
    "train_duq": "cfajax._train",
    "train_gan": "cfajax._train",
    "train_translator": "cfajax._train",
    "train_vae": "cfajax._train",
}


def __getattr__(name: str):
  if name in ("attacks", "metrics", "saliency"):
    value = importlib.import_module(f"cfajax.{name}")
  elif name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
  else:
    raise AttributeError(f"module 'cfajax' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

# The names below are loaded on first use by __getattr__, which a type checker cannot follow.
# pyright: reportUnsupportedDunderAll=false
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
    "TrustRegion",
    "counterfactual_attack",
    "local_mesh",
    # data-free counterfactuals
    "DataFreeResult",
    "data_free_attack",
    # one-pass counterfactuals
    "Translator",
    "TranslatorConfig",
    "evaluate_translator",
    "train_translator",
    # robustness
    "pgd_attack",
    "robust_accuracy",
    # inversion
    "InversionResult",
    "invert",
    # models
    "Classifier",
    "ClassifierConfig",
    "ConvGAN",
    "ConvVAE",
    "DUQ",
    "DUQConfig",
    "GANConfig",
    "Generator",
    "UNet",
    "UNetConfig",
    "VAEConfig",
    # diffusion models as generators
    "DiffusionConfig",
    "DiffusionGenerator",
    "NoiseSchedule",
    "load_diffusers",
    "build_model",
    "conv_general_dilated",
    # training
    "evaluate_classifier",
    "evaluate_duq",
    "evaluate_gan",
    "evaluate_diffusion",
    "evaluate_vae",
    "reconstruct",
    "train_classifier",
    "train_duq",
    "train_gan",
    "train_diffusion",
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
    "ProbeRefits",
    "Probes",
    "fit_probes",
    "global_attributions",
    "local_attributions",
    "probe_refits",
    # attacks as values, for explain(attack=...)
    "attacks",
    # counterfactual quality and saliency
    "metrics",
    "saliency",
    # descriptors
    "DESCRIPTOR_ATTRIBUTE_NAMES",
    "DESCRIPTOR_NAMES",
    "binarize_descriptors",
    "digit_descriptors",
]
