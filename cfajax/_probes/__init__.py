"""Linear probes: one L2-regularised logistic regression per attribute on latents.

For attribute `a` with labels `y_i` in {0, 1} and sample weights `s_i`, the
probe `g_a(z) = sigmoid(w . z + b)` minimises exactly scikit-learn's
`LogisticRegression(C=C)` objective

    J(w, b) = 1/2 |w|^2 + C * sum_i s_i * logloss(y_i, w . z_i + b),

with the intercept `b` unpenalised. The fit minimises `J / (C * sum_i s_i)`
instead (the same minimiser; it is also the scale scikit-learn's own lbfgs
solver works at), so that the loss term is a weighted mean of order one and the
gradient tolerance means the same thing for every `n` and `C`; float32 then
converges to a gradient norm of 1e-6 or less.
The latents are also centred before fitting and the intercept moved back
afterwards, `b = b_c - w . mean`: an exact reparametrisation (the intercept is
not penalised) that keeps float32 well conditioned when latents are not centred.

`fit_one_probe` runs full-batch L-BFGS (`optax.lbfgs` with its zoom line
search) for one attribute in a `lax.while_loop`; `fit_probes` maps it over the
attributes (vmapped in batches, or one at a time on CPU) and jits it once.

`_problem` prepares and checks the inputs, `_solver` fits, `_metrics` scores
the probes on held-out latents, and `fitting.fit_probes` puts them together.
"""

from cfajax._probes._metrics import probe_metrics
from cfajax._probes._metrics import roc_auc
from cfajax._probes._problem import FitProblem
from cfajax._probes._problem import check_attributes
from cfajax._probes._problem import check_names
from cfajax._probes._problem import class_sample_weights
from cfajax._probes._problem import fit_problem
from cfajax._probes._problem import normalized_weights
from cfajax._probes._solver import DEFAULT_MAX_ITER
from cfajax._probes._solver import DEFAULT_TOL
from cfajax._probes._solver import FitResult
from cfajax._probes._solver import Probes
from cfajax._probes._solver import _fit_all as _fit_all  # for _significance
from cfajax._probes._solver import default_attribute_batch_size
from cfajax._probes._solver import fit_one_probe
from cfajax._probes._solver import rescaled_objective
from cfajax._probes.fitting import fit_probes

__all__ = [
    "DEFAULT_MAX_ITER", "DEFAULT_TOL", "FitProblem", "FitResult", "Probes", "check_attributes",
    "check_names", "class_sample_weights", "default_attribute_batch_size", "fit_one_probe",
    "fit_probes", "fit_problem", "normalized_weights", "probe_metrics", "rescaled_objective",
    "roc_auc",
]
