"""FID's Inception and LPIPS in JAX reproduce pytorch-fid and lpips, from weight files.

The reference networks are the packages' own (pytorch-fid's `InceptionV3` with its FID
blocks, lpips' `LPIPS` with its AlexNet and VGG16 trunks), holding random weights (the
standard ones cannot be downloaded here), saved with `torch.save` in both of its formats
and read by cfajax without torch. Both sides compute in float64, where they must agree to
float64 round-off: a bound of 1e-9 relative to the reference's scale, over 1e-11 for
float64's 2^-53 accumulated over the longest reduction (3 x 3 x 512 products in VGG, 2048
channels in Inception's pool) through at most about 100 layers. Skipped without torch,
torchvision, pytorch-fid and lpips (`pip install -e ".[metrics-reference]"`); CI installs
them and fails on a skip.
"""

import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from cfajax import metrics
from cfajax._feature_nets import Weights
from cfajax._inception import inception_weights
from cfajax._inception import pool3_features
from cfajax._lpips import lpips_weights

from conftest import enable_x64

torch = pytest.importorskip("torch")
# torchvision's wheel on PyPI carries compiled detection operators built for CUDA torch;
# with torch's CPU build they do not load, and registering their abstract versions fails
# at import. The models compared here use none of them: skip those two registrations.
for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
  sys.modules.setdefault(_name, types.ModuleType(_name))
pytest.importorskip("torchvision")
fid_inception = pytest.importorskip("pytorch_fid.inception")
fid_score = pytest.importorskip("pytorch_fid.fid_score")
lpips_package = pytest.importorskip("lpips")

F64_TOL = 1e-9  # relative to the reference's largest magnitude (module docstring)


def _close(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = np.abs(expected).max()
  assert np.abs(actual - expected).max() <= F64_TOL * scale, (
      f"max difference {np.abs(actual - expected).max():.3g} at scale {scale:.3g}")


@pytest.fixture(scope="module")
def fid_reference(tmp_path_factory):
  """pytorch-fid's InceptionV3 with random weights, and those weights in the legacy format
  pytorch-fid's own file uses."""
  torch.manual_seed(0)
  net = fid_inception.fid_inception_v3.__globals__["_inception_v3"](
      num_classes=1008, aux_logits=False, weights=None, init_weights=True)
  # Random affine BatchNorm parameters, then running statistics of random images: every
  # weight the file holds takes a value that changes the output.
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.weight.data = 1 + 0.2 * torch.randn_like(module.weight)
      module.bias.data = 0.2 * torch.randn_like(module.bias)
      module.momentum = None
  net.train()
  with torch.no_grad():
    net(torch.rand(8, 3, 299, 299) * 2 - 1)
  state = {k: v for k, v in net.state_dict().items() if not k.startswith("AuxLogits")}
  path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
  torch.save(state, path, _use_new_zipfile_serialization=False)
  fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state
  model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  return model.double().eval(), path


def _torch_features(model, images):
  nchw = torch.tensor(np.repeat(images, 3 // images.shape[-1], -1)).permute(0, 3, 1, 2)
  with torch.no_grad():
    return model(nchw)[0][:, :, 0, 0].numpy()


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (2, 40, 36, 3), (2, 320, 300, 3)],
                         ids=["mnist-grey", "rgb-up", "rgb-down"])
def test_inception_features_equal_pytorch_fid(fid_reference, shape):
  model, path = fid_reference
  images = np.random.default_rng(1).random(shape)
  weights = {k: jnp.asarray(v, jnp.float64) for k, v in inception_weights(path).items()}
  with enable_x64():
    ours = pool3_features(Weights(weights), jnp.asarray(images))
  _close(ours, _torch_features(model, images))


def test_fid_equals_the_frechet_distance_of_pytorch_fids_features(fid_reference):
  model, path = fid_reference
  rng = np.random.default_rng(2)
  a, b = rng.random((5, 28, 28, 1)), rng.random((4, 28, 28, 1)) ** 2
  with enable_x64():
    ours = metrics.fid(a, b, weights=path, batch_size=2)
  fa, fb = _torch_features(model, a), _torch_features(model, b)
  expected = fid_score.calculate_frechet_distance(
      fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
  # pytorch-fid takes scipy's sqrtm of a singular product (9 images, 2048 features), whose
  # error no round-off bound covers (cfajax takes eigenvalues of a symmetric form instead);
  # the two differed by 9e-9 of the distance on this machine's LAPACK. 1e-6 leaves two orders
  # for other builds, and a wrong feature or formula moves the distance by far more.
  assert ours["fid"] == pytest.approx(expected, rel=1e-6)
  assert (ours["n"], ours["n_reference"]) == (5, 4)


@pytest.fixture(scope="module", params=["alex", "vgg"])
def lpips_reference(request, tmp_path_factory):
  """lpips' LPIPS with a random trunk and random positive linear layers, and the two files."""
  net = request.param
  torch.manual_seed(3)
  model = lpips_package.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
  for lin in model.lins:
    lin.model[-1].weight.data = torch.rand_like(lin.model[-1].weight)
  trunk = {f"features.{key.split('.', 1)[1]}": value
           for key, value in model.net.state_dict().items()}
  linear = {f"lin{k}.model.1.weight": lin.model[-1].weight.detach().clone()
            for k, lin in enumerate(model.lins)}
  folder = tmp_path_factory.mktemp(f"lpips-{net}")
  torch.save(trunk, folder / "trunk.pth")  # torchvision's files are zip archives
  torch.save(linear, folder / "linear.pth", _use_new_zipfile_serialization=False)  # lpips'
  model = model.double().eval()
  # lpips holds its input shift and scale as float32 constants: give the float64 reference
  # their exact values, which cfajax computes with.
  model.scaling_layer.shift = torch.tensor([-.030, -.088, -.188], dtype=torch.float64)[
      None, :, None, None]
  model.scaling_layer.scale = torch.tensor([.458, .448, .450], dtype=torch.float64)[
      None, :, None, None]
  return net, model, folder / "trunk.pth", folder / "linear.pth"


def test_lpips_equals_the_lpips_package(lpips_reference):
  net, model, trunk, linear = lpips_reference
  rng = np.random.default_rng(4)
  a = rng.random((3, 48, 40, 3))
  b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
  with enable_x64():
    ours = metrics.lpips(a, b, trunk=trunk, linear=linear, net=net, batch_size=2)
  to_torch = lambda x: torch.tensor(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    expected = model(to_torch(a), to_torch(b), normalize=True)[:, 0, 0, 0].numpy()
  _close(ours, expected)
  assert np.all(expected > 0)


def test_lpips_of_grey_resized_digits_equals_the_package_on_their_rgb_resize(lpips_reference):
  net, model, trunk, linear = lpips_reference
  rng = np.random.default_rng(5)
  a, b = rng.random((2, 28, 28, 1)), rng.random((2, 28, 28, 1))
  with enable_x64():
    ours = metrics.lpips(a, b, trunk=trunk, linear=linear, net=net, size=64)
  resize = lambda x: torch.nn.functional.interpolate(
      torch.tensor(x).permute(0, 3, 1, 2).repeat(1, 3, 1, 1), size=(64, 64), mode="bilinear",
      align_corners=False)
  with torch.no_grad():
    expected = model(resize(a), resize(b), normalize=True)[:, 0, 0, 0].numpy()
  _close(ours, expected)


def test_the_lpips_weight_loader_names_a_trunk_of_the_wrong_net(lpips_reference):
  net, _, trunk, linear = lpips_reference
  other = "vgg" if net == "alex" else "alex"
  with pytest.raises(ValueError, match="wrong shape|missing"):
    lpips_weights(other, trunk, linear)
