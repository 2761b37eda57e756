"""cfajax: counterfactual attacks and attributions for image classifiers, in JAX.

The whole public API:

Counterfactual attack
  counterfactual_attack(decode, classify, z, target, **options) -> AttackResult
  AttackResult, Status
"""

from cfajax._attack import AttackResult
from cfajax._attack import Status
from cfajax._attack import counterfactual_attack

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "Status",
    "counterfactual_attack",
]
