"""cfajax: counterfactual attacks and attributions for image classifiers, in JAX.

The whole public API:

Counterfactual attack
  counterfactual_attack(decode, classify, z, target, **options) -> AttackResult
  AttackResult, Status
  local_mesh(devices=None) -> Mesh      the device mesh the attack shards over

Attribute probes (one logistic regression per attribute on latents)
  fit_probes(z, attributes, *, C, class_weight, standardize, validation, ...) -> Probes
  Probes: .predict_proba(z), .predict_logit(z), .coef, .intercept, .names,
          diagnostics (.converged, .grad_norm, .iterations), .val_accuracy, .val_auc

Attributions
  local_attributions(probes, z, z_cf) -> (n, A) phi = g(z') - g(z)
  global_attributions(phi, original_prob, *, success, names, ...) -> GlobalAttributions
  GlobalAttributions: .psi, .stderr, .ci_low, .ci_high, .ranking, .top(k), .to_dict()

Digit descriptors (Morpho-MNIST-like attributes computed from images)
  digit_descriptors(images, *, threshold, upsample) -> (n, 6) values, DESCRIPTOR_NAMES
  binarize_descriptors(values, thresholds=None) -> ((n, 6) {0, 1}, thresholds),
    DESCRIPTOR_ATTRIBUTE_NAMES
"""

from cfajax._attack import counterfactual_attack
from cfajax._attributions import GlobalAttributions
from cfajax._attributions import global_attributions
from cfajax._attributions import local_attributions
from cfajax._descriptors import DESCRIPTOR_ATTRIBUTE_NAMES
from cfajax._descriptors import DESCRIPTOR_NAMES
from cfajax._descriptors import binarize_descriptors
from cfajax._descriptors import digit_descriptors
from cfajax._loop import AttackResult
from cfajax._loop import Status
from cfajax._probes import Probes
from cfajax._probes import fit_probes
from cfajax._scheduler import local_mesh

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "DESCRIPTOR_ATTRIBUTE_NAMES",
    "DESCRIPTOR_NAMES",
    "GlobalAttributions",
    "Probes",
    "Status",
    "binarize_descriptors",
    "counterfactual_attack",
    "digit_descriptors",
    "fit_probes",
    "global_attributions",
    "local_attributions",
    "local_mesh",
]
