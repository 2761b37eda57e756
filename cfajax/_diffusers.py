"""diffusers checkpoints without PyTorch: a `UNet2DModel` folder read into the NNX UNet and
the DDIM sampler, with numpy alone.

`load_diffusers(folder)` takes a pipeline folder (`unet/` and `scheduler/`, as
`DDPMPipeline.save_pretrained` writes and the hub holds) or a UNet folder
(`config.json` and `diffusion_pytorch_model.safetensors`, with
`scheduler_config.json` beside them or in `../scheduler/`). Everything it
cannot reproduce exactly is refused before any weight is read: block types,
embeddings and scheduler options it does not implement, and weights that are
missing, unexpected or of the wrong shape, each named.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from cfajax._models.diffusion import DiffusionGenerator
from cfajax._models.diffusion import NoiseSchedule
from cfajax._models.unet import UNet
from cfajax._models.unet import UNetConfig
from cfajax._models.unet import torch_name

WEIGHTS = "diffusion_pytorch_model.safetensors"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}
# UNet2DModel's options this loader reproduces, and the value each must have otherwise.
_FIXED = {"time_embedding_type": "positional", "act_fn": "silu",
          "resnet_time_scale_shift": "default", "class_embed_type": None,
          "num_class_embeds": None, "mid_block_type": "UNetMidBlock2D",
          "downsample_type": "conv", "upsample_type": "conv", "attn_norm_num_groups": None,
          "time_embedding_dim": None}
_SCHEDULER_FIXED = {"trained_betas": None, "thresholding": False,
                    "rescale_betas_zero_snr": False, "timestep_spacing": "leading"}


def read_safetensors(path) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors file as numpy arrays (read by this module alone).

  Raises:
    ValueError: a file that is not a whole safetensors file, naming what is wrong.
  """
  path = Path(path)
  data = path.read_bytes()
  if len(data) < 8:
    raise ValueError(f"{path} is not a safetensors file: {len(data)} bytes")
  (size,) = struct.unpack("<Q", data[:8])
  if 8 + size > len(data):
    raise ValueError(f"{path} is not a whole safetensors file: its header says {size} bytes "
                     f"and the file holds {len(data) - 8}")
  try:
    header = json.loads(data[8:8 + size])
  except ValueError as e:
    raise ValueError(f"{path}: the safetensors header is not JSON ({e})") from e
  body = memoryview(data)[8 + size:]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise ValueError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; readable: "
                       f"{sorted(_DTYPES)}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if not 0 <= begin <= end <= len(body) or end - begin != (
        int(np.prod(shape)) * np.dtype(dtype).itemsize):
      raise ValueError(f"{path}: tensor {name!r} of shape {shape} does not fit its bytes "
                       f"[{begin}, {end}) of {len(body)}: the file is damaged")
    tensors[name] = np.frombuffer(body[begin:end], dtype).reshape(shape)
  return tensors


def _refuse_unsupported(config: dict[str, Any], fixed: dict[str, Any], what: str) -> None:
  for key, wanted in fixed.items():
    if config.get(key, wanted) != wanted:
      raise ValueError(f"{what}: {key}={config[key]!r} is not supported (only {wanted!r})")


def unet_config(config: dict[str, Any], where: str = "config.json") -> UNetConfig:
  """The `UNetConfig` of a diffusers `UNet2DModel` config, or a ValueError naming what this
  loader does not implement."""
  name = config.get("_class_name", "UNet2DModel")
  if name != "UNet2DModel":
    raise ValueError(f"{where}: a {name} is not supported (only UNet2DModel)")
  _refuse_unsupported(config, _FIXED, where)
  down = list(config.get("down_block_types", ("DownBlock2D", "AttnDownBlock2D",
                                              "AttnDownBlock2D", "AttnDownBlock2D")))
  up = list(config.get("up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                          "UpBlock2D")))
  for kinds, known in ((down, _DOWN), (up, _UP)):
    unknown = sorted(set(kinds) - set(known))
    if unknown:
      raise ValueError(f"{where}: block types {unknown} are not supported (only "
                       f"{sorted(known)})")
  channels = config.get("in_channels", 3)
  if config.get("out_channels", 3) != channels:
    raise ValueError(f"{where}: in_channels {channels} and out_channels "
                     f"{config.get('out_channels')} differ; a generator's UNet predicts noise of "
                     "its input's shape")
  size = config.get("sample_size")
  if size is None:
    raise ValueError(f"{where}: sample_size is missing; the image size cannot be known")
  height, width = (size, size) if isinstance(size, int) else size
  widths = tuple(config.get("block_out_channels", (224, 448, 672, 896)))
  if not len(widths) == len(down) == len(up):
    raise ValueError(f"{where}: {len(widths)} block_out_channels, {len(down)} down blocks and "
                     f"{len(up)} up blocks: they must be as many")
  return UNetConfig(
      image_shape=(height, width, channels), widths=widths,
      down_attention=tuple(_DOWN[k] for k in down), up_attention=tuple(_UP[k] for k in up),
      layers_per_block=config.get("layers_per_block", 2),
      groups=config.get("norm_num_groups", 32), eps=config.get("norm_eps", 1e-5),
      head_dim=config.get("attention_head_dim", 8),
      mid_attention=config.get("add_attention", True),
      mid_scale=config.get("mid_block_scale_factor", 1.0),
      flip_sin_to_cos=config.get("flip_sin_to_cos", True),
      freq_shift=config.get("freq_shift", 0),
      downsample_padding=config.get("downsample_padding", 1),
      center_input=config.get("center_input_sample", False))


def noise_schedule(config: dict[str, Any], where: str = "scheduler_config.json"
                   ) -> NoiseSchedule:
  """The `NoiseSchedule` of a diffusers DDPM or DDIM scheduler config."""
  name = config.get("_class_name", "DDIMScheduler")
  if name not in ("DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler"):
    raise ValueError(f"{where}: a {name} is not supported (DDPMScheduler or DDIMScheduler)")
  _refuse_unsupported(config, _SCHEDULER_FIXED, where)
  fields = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample",
            "clip_sample_range", "set_alpha_to_one", "steps_offset", "prediction_type")
  try:
    return NoiseSchedule(**{k: config[k] for k in fields if k in config})
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e


def _folders(folder: Path) -> tuple[Path, Path | None]:
  """(the UNet's folder, its scheduler config or None)."""
  if (folder / "unet").is_dir():
    folder = folder / "unet"
  for candidate in (folder / "scheduler_config.json",
                    folder.parent / "scheduler" / "scheduler_config.json"):
    if candidate.is_file():
      return folder, candidate
  return folder, None


def _unet_files(folder: Path) -> tuple[Path, Path]:
  """(config.json, the weights) of a UNet folder, after checking both exist."""
  config_path, weights_path = folder / "config.json", folder / WEIGHTS
  for path in (config_path, weights_path):
    if not path.is_file():
      extra = (" (diffusion_pytorch_model.bin, a PyTorch pickle, is not read: save the model "
               "with safe_serialization=True)" if path == weights_path
               and (folder / "diffusion_pytorch_model.bin").exists() else "")
      raise FileNotFoundError(f"{path} does not exist: a diffusers UNet folder holds "
                              f"config.json and {WEIGHTS}{extra}")
  return config_path, weights_path


def load_unet(folder) -> UNet:
  """The NNX UNet of a diffusers `UNet2DModel` folder, its weights checked name by name."""
  config_path, weights_path = _unet_files(Path(folder))
  config = unet_config(json.loads(config_path.read_text()), str(config_path))
  model = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  template = nnx.to_pure_dict(state)
  tensors = read_safetensors(weights_path)
  paths = jax.tree_util.tree_flatten_with_path(template)[0]
  names = {torch_name(tuple(p.key for p in path)): (path, leaf) for path, leaf in paths}
  missing = sorted(set(names) - set(tensors))
  unexpected = sorted(set(tensors) - set(names))
  if missing or unexpected:
    raise ValueError(f"{weights_path} does not hold the weights of its config's UNet: "
                     f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected "
                     f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
  values = {}
  for name, (path, leaf) in names.items():
    array = _to_flax(tensors[name])
    if array.shape != leaf.shape:
      raise ValueError(f"{weights_path}: {name} has shape {tensors[name].shape}, which is not "
                       f"the {leaf.shape} (as NNX lays it out) its config's UNet needs")
    values[path] = array.astype(np.float32)
  weights = jax.tree_util.tree_map_with_path(lambda path, _: values[path], template)
  nnx.replace_by_pure_dict(state, weights)
  nnx.update(model, state)
  return model


def _to_flax(tensor: np.ndarray) -> np.ndarray:
  """A PyTorch layout as NNX's: convolutions OIHW -> HWIO, linear (out, in) -> (in, out)."""
  if tensor.ndim == 4:
    return tensor.transpose(2, 3, 1, 0)
  if tensor.ndim == 2:
    return tensor.T
  return tensor


def load_diffusers(folder, *, steps: int = 20, depth: float = 0.5, remat: bool = True,
                   schedule: NoiseSchedule | None = None) -> DiffusionGenerator:
  """A diffusers `UNet2DModel` checkpoint as the attack's generator (`DiffusionGenerator`).

  Args:
    folder: a pipeline folder (`unet/`, `scheduler/`) or a UNet folder.
    steps, depth, remat: as for `DiffusionGenerator`.
    schedule: the noise schedule, where the folder has no scheduler config.

  Raises:
    FileNotFoundError: the config, the weights or (without `schedule`) the
      scheduler config is missing.
    ValueError: an unsupported block, embedding or scheduler option, or
      weights missing, unexpected or of the wrong shape, named.
  """
  unet_folder, scheduler_path = _folders(Path(folder))
  _unet_files(unet_folder)  # every file and config checked before a weight is read
  if schedule is None:
    if scheduler_path is None:
      raise FileNotFoundError(f"{folder}: no scheduler_config.json beside the UNet or in "
                              "scheduler/; pass schedule=cfajax.NoiseSchedule(...)")
    schedule = noise_schedule(json.loads(scheduler_path.read_text()), str(scheduler_path))
  return DiffusionGenerator(load_unet(unet_folder), schedule, steps=steps, depth=depth,
                            remat=remat)
