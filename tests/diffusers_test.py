"""diffusers checkpoints read without PyTorch reproduce diffusers' own outputs.

Folders are written by diffusers itself (random weights, `save_pretrained`) in the
configurations of google/ddpm-cifar10-32 and google/ddpm-celebahq-256, with fewer channels
and a smaller image so the CPU runs them. The UNet and the DDIM updates are compared under
float64 on both sides, where the two must agree to float64 round-off: a bound of 1e-10
relative to the output's scale, over 1e-11 for float64's 2^-53 accumulated over the
longest reduction (3 x 3 x 128 products) through about 40 layers. Skipped without torch and
diffusers (`pip install -e ".[diffusers]"`); CI installs both and fails on a skip.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfajax
from cfajax import _diffusers
from cfajax._models import diffusion as _diffusion

from conftest import enable_x64

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

F64_TOL = 1e-10  # relative to the reference's largest magnitude (module docstring)

# google/ddpm-cifar10-32's and google/ddpm-celebahq-256's config.json, with channels
# and image size shrunk.
CONFIGS = {
    "cifar10-32": dict(
        sample_size=32, block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "celebahq-256": dict(
        sample_size=64, block_out_channels=(32, 32, 64, 64, 64, 64),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)}
COMMON = dict(in_channels=3, out_channels=3, layers_per_block=2, attention_head_dim=None,
              downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
              norm_num_groups=32, mid_block_scale_factor=1, center_input_sample=False,
              act_fn="silu", time_embedding_type="positional")
# Their scheduler_config.json: a DDPMScheduler, which DDIM reads.
SCHEDULER = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True,
                 num_train_timesteps=1000, variance_type="fixed_small")


class _Float64TimeEmbedding(torch.nn.Module):
  """diffusers' sinusoidal embedding computed in float64 (it computes it in float32, which
  the float64 comparison must not mix in; the float32 one is compared on its own below)."""

  def __init__(self, dim, flip, shift):
    super().__init__()
    self.dim, self.flip, self.shift = dim, flip, shift

  def forward(self, t):
    half = self.dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64)
                      / (half - self.shift))
    angles = t[:, None].double() * freqs[None]
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([cos, sin] if self.flip else [sin, cos], dim=-1)


def write_pipeline(folder, name, seed=0):
  """A diffusers pipeline folder with random weights; the torch UNet and its config."""
  torch.manual_seed(seed)
  unet = diffusers.UNet2DModel(**CONFIGS[name], **COMMON)
  with torch.no_grad():  # away from the initialisation's zeros and ones
    for p in unet.parameters():
      p.add_(0.05 * torch.randn_like(p))
  unet.save_pretrained(folder / "unet", safe_serialization=True)
  diffusers.DDPMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
  unet = unet.double().eval()
  unet.time_proj = _Float64TimeEmbedding(unet.config.block_out_channels[0],
                                         unet.config.flip_sin_to_cos, unet.config.freq_shift)
  return unet


def as_float64(unet):
  graphdef, state = nnx.split(unet)
  return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state))


def torch_unet(unet, x, t):
  """(B, H, W, C) float64 -> the torch UNet's output, NHWC."""
  with torch.no_grad():
    out = unet(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(np.asarray(t)))
  return out.sample.numpy().transpose(0, 2, 3, 1)


def assert_f64_close(actual, reference):
  scale = np.abs(reference).max()
  np.testing.assert_allclose(actual, reference, rtol=0, atol=F64_TOL * scale)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pipeline(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  return folder, write_pipeline(folder, request.param), request.param


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
  """The cifar10-32 configuration's pipeline, for the sampler and the refusals."""
  folder = tmp_path_factory.mktemp("cifar")
  return folder, write_pipeline(folder, "cifar10-32", seed=1), "cifar10-32"


def test_the_unet_reproduces_diffusers(pipeline):
  folder, reference, name = pipeline
  generator = cfajax.load_diffusers(folder)
  size = CONFIGS[name]["sample_size"]
  x = np.random.default_rng(0).standard_normal((2, size, size, 3))
  t = np.array([3, 871])
  with enable_x64():
    out = np.asarray(as_float64(generator.unet)(jnp.asarray(x), jnp.asarray(t)))
  assert_f64_close(out, torch_unet(reference, x, t))


def test_the_float32_time_embedding_is_diffusers():
  from diffusers.models.embeddings import get_timestep_embedding

  from cfajax._models.unet import timestep_embedding
  t = np.arange(0, 1000, 37)
  ours = np.asarray(timestep_embedding(jnp.asarray(t), 32, False, 1))
  theirs = get_timestep_embedding(torch.from_numpy(t), 32, flip_sin_to_cos=False,
                                  downscale_freq_shift=1).numpy()
  # Both form the same float32 angle t * f from frequencies f <= 1 whose exp may differ by
  # 2 ulp: |d angle| <= 1000 * 2 * 2^-24 + ulp(1000) < 2e-4, and sin, cos are 1-Lipschitz.
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4)


def test_the_noise_schedule_is_diffusers():
  theirs = diffusers.DDIMScheduler(**{k: v for k, v in SCHEDULER.items()
                                      if k != "variance_type"}).alphas_cumprod.numpy()
  ours = _diffusion.NoiseSchedule().alphas_cumprod()
  # A product of T float32 factors, each rounded (and the betas' linspace) on both sides:
  # at most about (T + 2) * 2^-24 relative apart.
  np.testing.assert_allclose(ours, theirs, rtol=1002 * 2.0**-24, atol=0)


def _diffusers_schedulers(schedule, steps):
  """DDIM and DDIM-inverse schedulers holding our alpha-bars (compared above) in float64,
  so that what is compared below is the updates alone, in float64 on both sides."""
  options = {k: v for k, v in SCHEDULER.items() if k != "variance_type"}
  forward = diffusers.DDIMScheduler(**options)
  inverse = diffusers.DDIMInverseScheduler(**options)
  for scheduler in (forward, inverse):
    scheduler.alphas_cumprod = torch.from_numpy(schedule.alphas_cumprod().astype(np.float64))
    scheduler.set_timesteps(steps)
  return forward, inverse


@pytest.mark.parametrize("depth", [0.3, 1.0])
def test_ddim_sampling_and_inversion_reproduce_diffusers(cifar, depth):
  folder, reference, _ = cifar
  steps = 10
  generator = cfajax.load_diffusers(folder, steps=steps, depth=depth)
  forward, inverse = _diffusers_schedulers(generator.schedule, steps)
  k = generator.edit_steps
  rng = np.random.default_rng(1)
  images = rng.random((2, 32, 32, 3))
  noisy = rng.standard_normal((2, 32, 32, 3))
  # diffusers: the last k DDIM steps from `noisy`, and k inversion steps from the images.
  x = torch.from_numpy(noisy.transpose(0, 3, 1, 2))
  with torch.no_grad():
    for t in forward.timesteps[-k:]:
      x = forward.step(reference(x, t).sample, t, x).prev_sample
    sampled = (x.numpy().transpose(0, 2, 3, 1) + 1) / 2
    x = torch.from_numpy(2 * images.transpose(0, 3, 1, 2) - 1)
    for t in inverse.timesteps[:k]:
      x = inverse.step(reference(x, t).sample, t, x).prev_sample
    inverted = x.numpy().transpose(0, 2, 3, 1).reshape(2, -1)
  with enable_x64():
    ours = _diffusion.DiffusionGenerator(as_float64(generator.unet), generator.schedule,
                                         steps=steps, depth=depth)
    assert_f64_close(np.asarray(ours.decode(jnp.asarray(noisy.reshape(2, -1)))), sampled)
    assert_f64_close(np.asarray(ours.encode(jnp.asarray(images))), inverted)


def test_one_ddim_step_of_each_kind_reproduces_diffusers():
  schedule = _diffusion.NoiseSchedule()
  forward, inverse = _diffusers_schedulers(schedule, 20)
  rng = np.random.default_rng(2)
  eps, sample = rng.standard_normal((2, 1, 4, 4, 3))
  for t in (950, 50, 0):
    want = forward.step(torch.from_numpy(eps), t, torch.from_numpy(sample)).prev_sample
    back = inverse.step(torch.from_numpy(eps), t, torch.from_numpy(sample)).prev_sample
    with enable_x64():
      got = _diffusion.ddim_step(schedule, jnp.asarray(eps), t, jnp.asarray(sample), 20)
      got_back = _diffusion.ddim_inverse_step(schedule, jnp.asarray(eps), t,
                                              jnp.asarray(sample), 20)
      assert_f64_close(np.asarray(got), want.numpy())
      assert_f64_close(np.asarray(got_back), back.numpy())


def test_the_safetensors_reader_reads_what_safetensors_writes(tmp_path):
  tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).half(),
             "c": torch.randn(2, 2).bfloat16(), "d": torch.arange(6).reshape(2, 3)}
  safetensors_torch.save_file(tensors, tmp_path / "t.safetensors")
  read = _diffusers.read_safetensors(tmp_path / "t.safetensors")
  assert sorted(read) == sorted(tensors)
  for name, tensor in tensors.items():
    np.testing.assert_array_equal(read[name].astype(np.float64),
                                  tensor.float().numpy().astype(np.float64))
  data = (tmp_path / "t.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[:-10])
  with pytest.raises(ValueError, match="does not fit its bytes"):
    _diffusers.read_safetensors(tmp_path / "cut.safetensors")


# -- bad checkpoints are refused before work, naming the key --------------------------


def _copy_unet(cifar, tmp_path):
  folder, _, _ = cifar
  import shutil
  shutil.copytree(folder, tmp_path / "p")
  return tmp_path / "p"


def _edit_weights(folder, edit):
  path = folder / "unet" / _diffusers.WEIGHTS
  tensors = safetensors_torch.load_file(path)
  edit(tensors)
  safetensors_torch.save_file(tensors, path)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("conv_out.bias"), r"missing \['conv_out.bias'\]"),
    (lambda t: t.update(extra=torch.zeros(3)), r"unexpected \['extra'\]"),
    (lambda t: t.update({"conv_in.weight": torch.zeros(32, 3, 5, 5)}),
     r"conv_in.weight has shape \(32, 3, 5, 5\)"),
])
def test_weights_that_do_not_fit_the_config_are_refused_naming_the_key(cifar, tmp_path, edit,
                                                                        match):
  folder = _copy_unet(cifar, tmp_path)
  _edit_weights(folder, edit)
  with pytest.raises(ValueError, match=match):
    cfajax.load_diffusers(folder)


@pytest.mark.parametrize("key, value, match", [
    ("down_block_types", ["CrossAttnDownBlock2D"] * 4,
     r"block types \['CrossAttnDownBlock2D'\] are not supported"),
    ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift='scale_shift' is not"),
    ("time_embedding_type", "fourier", "time_embedding_type='fourier' is not supported"),
])
def test_unsupported_architectures_are_refused_naming_them(cifar, tmp_path, key, value, match):
  folder = _copy_unet(cifar, tmp_path)
  config_path = folder / "unet" / "config.json"
  config = json.loads(config_path.read_text())
  config[key] = value
  config_path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match=match):
    cfajax.load_diffusers(folder)


def test_images_of_another_size_and_missing_files_are_refused(cifar, tmp_path):
  folder, _, _ = cifar
  generator = cfajax.load_diffusers(folder, steps=4, depth=0.5)
  with pytest.raises(ValueError, match=r"built for images of shape \(\d+, \d+, 3\); got images "
                     r"of shape \(28, 28, 1\)"):
    generator.encode(np.zeros((1, 28, 28, 1), np.float32))
  with pytest.raises(FileNotFoundError, match="config.json does not exist"):
    cfajax.load_diffusers(tmp_path / "nothing")
  with pytest.raises(ValueError, match="depth must be in"):
    cfajax.load_diffusers(folder, depth=0)
