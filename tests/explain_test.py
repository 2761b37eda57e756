"""The dataset-wide pipeline: outputs, resuming after SIGKILL, several processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

import cfajax
from cfajax._explain import ExplainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  """A tiny digits run whose trained models later runs reuse."""
  out = str(tmp_path_factory.mktemp("explain") / "first")
  config = ExplainConfig(
      out=out, latent_dim=4, vae_widths=(8, 16), classifier_widths=(8, 16), vae_epochs=30,
      classifier_epochs=15, train_batch_size=32, max_steps=200, step_size=0.5,
      chunk_size=64, pool_size=32, num_bootstrap=100, explain_split="test")
  summary = cfajax.explain(config, progress=False, log=None)
  return config, summary


def config_like(small_run, out, **changes):
  config, _ = small_run
  models = os.path.join(config.out, "models")
  return ExplainConfig(**{**config.to_dict(), "out": str(out), "vae": f"{models}/vae",
                          "classifier": f"{models}/classifier", **changes})


def test_outputs(small_run):
  config, summary = small_run
  with open(os.path.join(config.out, "summary.json")) as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  examples = np.load(os.path.join(config.out, "examples.npz"))
  n = summary["num_examples"]
  names = list(examples["attribute_names"])
  assert n > 20 and examples["z"].shape == examples["z_cf"].shape == (n, 4)
  assert examples["phi"].shape == (n, len(names)) and len(names) == 6
  assert set(np.unique(examples["target"])) <= {4, 9}
  success = examples["status"] == cfajax.Status.REACHED
  assert summary["flip_rate"] == pytest.approx(np.mean(success))
  # A reached target means the pair decision sits on the target's side.
  flipped = (examples["counterfactual_prob"] >= 0.5) == (examples["target"] == 9)
  assert np.all(flipped[success])
  psi = summary["global_attributions"]
  assert sorted(psi["ranking"]) == sorted(names) == sorted(psi["attributes"])
  magnitudes = [abs(psi["attributes"][name]["psi"]) for name in psi["ranking"]]
  assert magnitudes == sorted(magnitudes, reverse=True)
  for name in ("counterfactuals.png", "global_attributions.png"):
    with Image.open(os.path.join(config.out, name)) as image:
      assert image.size[0] > 200 and image.size[1] > 100
  assert set(summary["timings_s"]) >= {"models", "probes", "attack", "attributions"}


def test_config_mismatch_is_refused(small_run):
  config, _ = small_run
  with pytest.raises(ValueError, match="another configuration"):
    cfajax.explain(config, progress=False, log=None, max_steps=61)


KILL_AFTER_TWO_CHUNKS = textwrap.dedent("""
    import json, os, signal, sys
    import cfajax
    from cfajax import _explain
    saved = []
    original = _explain._save_npz
    def save_then_die(path, **arrays):
      original(path, **arrays)
      if "chunks" in path:
        saved.append(path)
        if len(saved) == 2:
          os.kill(os.getpid(), signal.SIGKILL)
    _explain._save_npz = save_then_die
    config = _explain.ExplainConfig.from_dict(json.loads(sys.argv[1]))
    cfajax.explain(config, progress=False, log=None)
""")


def run_python(code, *args, env=None, timeout=300):
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_resume_after_sigkill_gives_identical_results(small_run, tmp_path):
  whole = config_like(small_run, tmp_path / "whole", chunk_size=16)
  killed = config_like(small_run, tmp_path / "killed", chunk_size=16)
  done = run_python(KILL_AFTER_TWO_CHUNKS, json.dumps(killed.to_dict()))
  assert done.returncode == -9, done.stderr[-2000:]
  chunks = sorted(os.listdir(tmp_path / "killed" / "chunks"))
  assert chunks == ["attack-00000.npz", "attack-00001.npz"]
  assert not os.path.exists(tmp_path / "killed" / "summary.json")

  resumed = cfajax.explain(killed, progress=False, log=None)
  uninterrupted = cfajax.explain(whole, progress=False, log=None)
  assert resumed["num_resumed"] == 32 and uninterrupted["num_resumed"] == 0
  a = np.load(tmp_path / "killed" / "examples.npz")
  b = np.load(tmp_path / "whole" / "examples.npz")
  for key in b.files:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert resumed["global_attributions"] == uninterrupted["global_attributions"]


TWO_PROCESSES = textwrap.dedent("""
    import json, sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2,
                               process_id=int(sys.argv[3]))
    import cfajax
    from cfajax import _explain
    config = _explain.ExplainConfig.from_dict(json.loads(sys.argv[1]))
    summary = cfajax.explain(config, progress=False, log=None)
    print("processes", summary["process_count"])
""")


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(small_run, tmp_path):
  single = config_like(small_run, tmp_path / "single", chunk_size=16)
  shared = config_like(small_run, tmp_path / "shared", chunk_size=16)
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  workers = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, json.dumps(shared.to_dict()),
                               address, str(rank)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
  outputs = [w.communicate(timeout=300) for w in workers]
  for worker, (out, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
    assert "processes 2" in out
  alone = cfajax.explain(single, progress=False, log=None)
  a = np.load(tmp_path / "shared" / "examples.npz")
  b = np.load(tmp_path / "single" / "examples.npz")
  for key in b.files:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  with open(tmp_path / "shared" / "summary.json") as f:
    assert json.load(f)["global_attributions"] == json.loads(
        json.dumps(alone["global_attributions"]))


def test_probe_attributes_leave_out_the_target_its_near_duplicates_and_named_ones():
  rng = np.random.default_rng(0)
  male = rng.integers(0, 2, 2000)
  lipstick = np.where(rng.random(2000) < 0.9, 1 - male, male)  # r = -0.8
  beard = np.where(rng.random(2000) < 0.7, male, 1 - male)      # r = +0.4
  smiling = rng.integers(0, 2, 2000)
  bald = rng.integers(0, 2, 2000)
  names = ["Male", "Wearing_Lipstick", "Beard", "Smiling", "Bald"]
  labels = np.stack([male, lipstick, beard, smiling, bald], axis=1)
  keep, excluded = cfajax.select_probe_attributes(names, labels, ["Male"], exclude=["Bald"])
  assert [names[i] for i in keep] == ["Beard", "Smiling"]
  assert excluded["Male"] == "explained" and excluded["Bald"] == "excluded"
  assert excluded["Wearing_Lipstick"].startswith("near-duplicate of Male (r = -0.8")
  keep, _ = cfajax.select_probe_attributes(names, labels, ["Male"], max_correlation=1.0)
  assert [names[i] for i in keep] == ["Wearing_Lipstick", "Beard", "Smiling", "Bald"]
  with pytest.raises(ValueError, match=r"unknown attributes \['Blond'\]"):
    cfajax.select_probe_attributes(names, labels, ["Blond"])


def test_select_output_is_one_sigmoid_head_that_the_attack_accepts():
  from flax import nnx
  config = cfajax.ClassifierConfig(image_shape=(8, 8, 1), num_outputs=3, head="sigmoid",
                                   widths=(4,), dense_width=8, output_names=("Young", "Male", "Bald"))
  classifier = cfajax.Classifier(config, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).random((5, 8, 8, 1), np.float32)
  male = cfajax.select_output(classifier, "Male")
  np.testing.assert_array_equal(male(x), np.asarray(classifier(x))[:, 1:2])
  decode = lambda z: jax.nn.sigmoid(z.reshape(-1, 8, 8, 1))
  result = cfajax.counterfactual_attack(decode, male, np.zeros((2, 64), np.float32), 1,
                                        max_steps=3)
  assert result.z.shape == (2, 64)
  with pytest.raises(ValueError, match="not the CelebA attribute 'Smiling'"):
    cfajax.select_output(classifier, "Smiling")
