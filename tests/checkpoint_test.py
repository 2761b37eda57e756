"""Tests of orbax checkpoints: round trips, overwrites, atomicity, checksums, clear errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import cfajax
from cfajax import _checkpoint
from cfajax import _hashing

X = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)


def test_vae_round_trip_gives_identical_outputs(tmp_path, tiny_vae):
  path = cfajax.save_model(tmp_path / "vae", tiny_vae, metrics=[{"epoch": 1,
                                                                "loss": np.float32(2.5)}])
  loaded = cfajax.load_model(path)
  assert isinstance(loaded, cfajax.ConvVAE) and loaded.config == tiny_vae.config
  np.testing.assert_array_equal(loaded.encode(X), tiny_vae.encode(X))
  np.testing.assert_array_equal(loaded.decode(loaded.encode(X)), tiny_vae.reconstruct(X))
  info = cfajax.read_checkpoint_info(path)
  assert info["kind"] == "vae" and info["metrics"] == [{"epoch": 1, "loss": 2.5}]


def test_classifier_round_trip_gives_identical_outputs(tmp_path, tiny_classifier):
  cfajax.save_model(tmp_path / "clf", tiny_classifier)
  loaded = cfajax.load_model(str(tmp_path / "clf"))
  assert isinstance(loaded, cfajax.Classifier) and loaded.config == tiny_classifier.config
  np.testing.assert_array_equal(loaded(X), tiny_classifier(X))


def test_relative_checkpoint_paths_save_and_restore(tmp_path, monkeypatch, tiny_classifier):
  monkeypatch.chdir(tmp_path)
  cfajax.save_model("runs/clf", tiny_classifier)
  np.testing.assert_array_equal(cfajax.load_model("runs/clf")(X), tiny_classifier(X))


def test_weights_are_stored_as_host_arrays(tmp_path, tiny_classifier):
  # Saved from host copies: the orbax metadata names no device, so a checkpoint
  # written on a GPU has nothing that ties it to one.
  cfajax.save_model(tmp_path / "clf", tiny_classifier)
  metadata = (tmp_path / "clf" / "state" / "_METADATA").read_text()
  assert "np.ndarray" in metadata
  assert "cuda" not in metadata and not (tmp_path / "clf" / "state" / "_sharding").exists()


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_restores_weights_whose_metadata_names_a_missing_device(tmp_path, tiny_classifier):
  # Orbax state written from device arrays on a GPU records "cuda:0" shardings;
  # load_model restores as numpy and ignores them. (The checksums are those of
  # the files as written there.)
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  state_dir = path / "state"
  weights = _checkpoint._string_keys(nnx.to_pure_dict(nnx.state(tiny_classifier, nnx.Param)))
  shutil.rmtree(state_dir)
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(state_dir, args=ocp.args.PyTreeSave(weights))
  sharding = state_dir / "_sharding"
  sharding.write_text(sharding.read_text().replace("cpu:0", "cuda:0"))
  record_checksums(path)
  np.testing.assert_array_equal(cfajax.load_model(path)(X), tiny_classifier(X))


def record_checksums(path):
  """Rewrites a checkpoint's recorded file checksums for files changed on purpose."""
  meta = json.loads((path / "cfajax.json").read_text())
  meta["files"] = {f"state/{name}": entry
                   for name, entry in _hashing.digest_folder(path / "state").items()}
  (path / "cfajax.json").write_text(json.dumps(meta))


def test_overwriting_replaces_the_checkpoint(tmp_path, tiny_classifier):
  path = tmp_path / "clf"
  other = cfajax.build_model("classifier", tiny_classifier.config, seed=7)
  cfajax.save_model(path, other)
  cfajax.save_model(path, tiny_classifier)
  np.testing.assert_array_equal(cfajax.load_model(path)(X), tiny_classifier(X))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]  # no temporary left


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, tiny_classifier, monkeypatch):
  path = tmp_path / "clf"
  cfajax.save_model(path, tiny_classifier)
  other = cfajax.build_model("classifier", tiny_classifier.config, seed=7)

  def fail(*args, **kwargs):
    raise KeyboardInterrupt("interrupted while writing")

  monkeypatch.setattr(Path, "write_text", fail)  # the JSON is written last
  with pytest.raises(KeyboardInterrupt):
    cfajax.save_model(path, other)
  monkeypatch.undo()
  np.testing.assert_array_equal(cfajax.load_model(path)(X), tiny_classifier(X))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]
  # A save interrupted before any checkpoint existed leaves nothing under the name.
  monkeypatch.setattr(Path, "write_text", fail)
  with pytest.raises(KeyboardInterrupt):
    cfajax.save_model(tmp_path / "new", other)
  monkeypatch.undo()
  assert not (tmp_path / "new").exists()


def test_missing_checkpoint_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint at"):
    cfajax.load_model(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="cfajax.json is missing"):
    cfajax.load_model(tmp_path / "empty")


def test_missing_weights_error(tmp_path, tiny_classifier):
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  shutil.rmtree(path / "state")
  with pytest.raises(FileNotFoundError, match="state/"):
    cfajax.load_model(path)


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else"}', "not a cfajax model checkpoint"),
    ('{"format": "cfajax-model", "format_version": 99}', "format_version 99"),
    ('{"format": "cfajax-model", "format_version": 1, "kind": "gan", "config": {}}', "gan"),
])
def test_corrupt_json_errors(tmp_path, tiny_classifier, text, match):
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  (path / "cfajax.json").write_text(text)
  with pytest.raises(ValueError, match=match):
    cfajax.load_model(path)


def largest_weight_file(path):
  return max((f for f in (path / "state").rglob("*") if f.is_file()),
             key=lambda f: f.stat().st_size)


def test_any_changed_byte_of_the_weights_is_refused(tmp_path, tiny_vae):
  # Flipping bytes inside orbax's data file used to load silently at most
  # positions (309 weights changed, sometimes NaN).
  path = cfajax.save_model(tmp_path / "vae", tiny_vae)
  data = largest_weight_file(path)
  original = data.read_bytes()
  for position in np.linspace(0, len(original) - 64, 9).astype(int):
    damaged = bytearray(original)
    damaged[position:position + 64] = bytes(b ^ 0xFF for b in damaged[position:position + 64])
    data.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=f"{data.name} does not match the checksum"):
      cfajax.load_model(path)
  data.write_bytes(original)
  np.testing.assert_array_equal(cfajax.load_model(path).encode(X), tiny_vae.encode(X))


def test_truncated_missing_and_foreign_files_are_refused(tmp_path, tiny_classifier):
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  data = largest_weight_file(path)
  original = data.read_bytes()
  data.write_bytes(original[:-10])
  with pytest.raises(ValueError, match="does not match the checksum"):
    cfajax.load_model(path)
  data.unlink()
  with pytest.raises(FileNotFoundError, match=f"{data.relative_to(path)} is missing"):
    cfajax.load_model(path)
  data.write_bytes(original)
  (path / "state" / "extra").write_bytes(b"x")
  with pytest.raises(ValueError, match="holds state/extra, which this checkpoint did not write"):
    cfajax.load_model(path)


def test_weights_that_differ_from_the_saved_digest_are_refused(tmp_path, tiny_classifier):
  # A second line of defence behind the file checksums: what orbax returns must
  # be the weights that were saved.
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  meta = json.loads((path / "cfajax.json").read_text())
  assert meta["weights_sha256"] == _checkpoint.weights_digest(tiny_classifier)
  meta["weights_sha256"] = "0" * 64
  (path / "cfajax.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="differ from those that were saved"):
    cfajax.load_model(path)


def test_a_checkpoint_without_checksums_loads_with_a_warning(tmp_path, tiny_classifier):
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  meta = json.loads((path / "cfajax.json").read_text())
  meta["format_version"] = 1
  del meta["files"], meta["weights_sha256"]
  (path / "cfajax.json").write_text(json.dumps(meta))
  with pytest.warns(UserWarning, match="cannot be verified"):
    loaded = cfajax.load_model(path)
  np.testing.assert_array_equal(loaded(X), tiny_classifier(X))


FAIL_TWICE = textwrap.dedent("""
    import sys
    import cfajax
    for _ in range(2):
      try:
        cfajax.load_model(sys.argv[1])
      except ValueError as e:
        print("refused:", str(e)[:60])
""")


def test_failed_loads_print_nothing_else(tmp_path, tiny_vae):
  # Truncated weights used to reach orbax, whose I/O thread then printed
  # "Event loop is closed" tracebacks after the failed loads (for this VAE's
  # checkpoint, 6 to 23 lines in each of four runs).
  path = cfajax.save_model(tmp_path / "vae", tiny_vae)
  data = largest_weight_file(path)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])  # truncated
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, "-c", FAIL_TWICE, str(path)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.count("refused:") == 2
  assert "Traceback" not in done.stderr and "Event loop" not in done.stderr, done.stderr


def test_config_that_does_not_match_the_weights_errors(tmp_path, tiny_classifier):
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  meta = json.loads((path / "cfajax.json").read_text())
  meta["config"]["dense_width"] = 32
  (path / "cfajax.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="the model expects"):
    cfajax.load_model(path)
