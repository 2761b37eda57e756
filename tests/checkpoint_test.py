"""Tests of orbax checkpoints: round trips, overwrites, atomicity and clear errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import cfajax
from cfajax import _checkpoint

# Restoring corrupt files makes orbax's I/O thread post to its closed event loop
# ("RuntimeError: Event loop is closed", ignored inside orbax); pytest reports
# that as an unraisable exception in whichever test runs next.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

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
  # A checkpoint whose orbax state was written from device arrays on a GPU records
  # "cuda:0" shardings; load_model restores as numpy and ignores them.
  cfajax.save_model(tmp_path / "clf", tiny_classifier)
  state_dir = tmp_path / "clf" / "state"
  weights = _checkpoint._string_keys(nnx.to_pure_dict(nnx.state(tiny_classifier, nnx.Param)))
  shutil.rmtree(state_dir)
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(state_dir, args=ocp.args.PyTreeSave(weights))
  sharding = state_dir / "_sharding"
  sharding.write_text(sharding.read_text().replace("cpu:0", "cuda:0"))
  with pytest.raises(Exception), ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.restore(state_dir)  # orbax's own restore looks for that device
  np.testing.assert_array_equal(cfajax.load_model(tmp_path / "clf")(X), tiny_classifier(X))


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


def test_corrupt_weights_error(tmp_path, tiny_classifier):
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  for data in (path / "state").rglob("*"):
    if data.is_file() and "ocdbt" in str(data.relative_to(path)):
      data.write_bytes(b"garbage")
  with pytest.raises(ValueError, match="corrupt"):
    cfajax.load_model(path)


def test_config_that_does_not_match_the_weights_errors(tmp_path, tiny_classifier):
  path = cfajax.save_model(tmp_path / "clf", tiny_classifier)
  meta = json.loads((path / "cfajax.json").read_text())
  meta["config"]["dense_width"] = 32
  (path / "cfajax.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="the model expects"):
    cfajax.load_model(path)
