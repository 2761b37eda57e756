"""The names that an attack's string options take, importable without JAX.

The attack values (`cfajax.attacks`) and the command line check options
against these before JAX is loaded; the modules that run the attacks use the
same tuples.
"""

OBJECTIVES = ("logit", "prob", "log_prob")  # what is ascended: the target's log-odds, ...
PRIORS = ("pixels", "implicit")  # the data-free attack's image parameterisations
OPTIMIZERS = ("trust-region", "ascent", "adam")  # the step rules named in an explain run
PRECISIONS = ("float32", "bfloat16")  # the models' arithmetic in an explain run
