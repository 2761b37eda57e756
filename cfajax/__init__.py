"""cfajax: counterfactual attacks and attributions for image classifiers, in JAX.

The whole public API:

Counterfactual attack
  counterfactual_attack(decode, classify, z, target, **options) -> AttackResult
  AttackResult, Status
  local_mesh(devices=None) -> Mesh      the device mesh the attack shards over
"""

from cfajax._loop import AttackResult
from cfajax._loop import Status
from cfajax._attack import counterfactual_attack
from cfajax._scheduler import local_mesh

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "Status",
    "counterfactual_attack",
    "local_mesh",
]
