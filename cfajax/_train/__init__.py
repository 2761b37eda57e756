"""Training and evaluation of every model family on `ImageDataset`s.

The steps are `@nnx.jit` functions of the model and an `nnx.Optimizer`
(Adam with a warmup-cosine learning rate). Batches are drawn on the host from
a seeded permutation per epoch, so a run is reproducible from its seed; the
last partial batch of an epoch is dropped, and evaluation pads its last batch,
so every step has the same shapes and compiles once. Nothing here names a
device: the same code runs on CPU, GPU or TPU.

One family a module (`vae`, `classifier`, `gan`, `duq`, `translator`, `diffusion`), each
its steps, `evaluate_*` and `train_*`; `_epochs` the loop they share;
`reconstruction` applies a generator to many images.
"""

from cfajax._train._epochs import History
from cfajax._train._epochs import make_optimizer
from cfajax._train.classifier import classifier_targets
from cfajax._train.classifier import evaluate_classifier
from cfajax._train.classifier import train_classifier
from cfajax._train.diffusion import evaluate_diffusion
from cfajax._train.diffusion import train_diffusion
from cfajax._train.duq import evaluate_duq
from cfajax._train.duq import train_duq
from cfajax._train.gan import evaluate_gan
from cfajax._train.gan import train_gan
from cfajax._train.reconstruction import reconstruct
from cfajax._train.translator import evaluate_translator
from cfajax._train.translator import other_classes
from cfajax._train.translator import train_translator
from cfajax._train.vae import evaluate_vae
from cfajax._train.vae import train_vae

__all__ = [
    "History", "classifier_targets", "evaluate_classifier", "evaluate_diffusion",
    "evaluate_duq", "evaluate_gan", "evaluate_translator", "evaluate_vae", "make_optimizer",
    "other_classes", "reconstruct", "train_classifier", "train_diffusion", "train_duq",
    "train_gan", "train_translator", "train_vae",
]
