"""The dataset-wide pipeline: outputs, resuming after SIGKILL, several processes."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

import cfajax
from cfajax._batching import apply_batched
from cfajax._explain import ExplainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  """A tiny digits run whose trained models later runs reuse."""
  out = str(tmp_path_factory.mktemp("explain") / "first")
  config = ExplainConfig(
      out=out, latent_dim=4, vae_widths=(8, 16), classifier_widths=(8, 16), vae_epochs=30,
      classifier_epochs=15, train_batch_size=32,
      attack=cfajax.attacks.LatentAttack(max_steps=200, step_size=0.5), chunk_size=64,
      pool_size=32, num_bootstrap=100, num_permutations=40, explain_split="test")
  summary = cfajax.explain(config, progress=False, log=None)
  return config, summary


def config_like(small_run, out, **changes):
  config, _ = small_run
  models = os.path.join(config.out, "models")
  return dataclasses.replace(config, **{"out": str(out), "generator": f"{models}/vae",
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
  # Each row is found again in the preset's own split by its id.
  assert "split" not in examples.files  # this run explains the test split alone
  digits_test = cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)[1]
  row = {int(i): k for k, i in enumerate(digits_test.ids)}
  np.testing.assert_array_equal(examples["label"],
                                digits_test.labels[[row[int(i)] for i in examples["ids"]]])
  success = examples["status"] == cfajax.Status.REACHED
  assert summary["flip_rate"] == pytest.approx(np.mean(success))
  # A reached target means the pair decision sits on the target's side.
  flipped = (examples["counterfactual_prob"] >= 0.5) == (examples["target"] == 9)
  assert np.all(flipped[success])
  psi = summary["global_attributions"]
  assert sorted(psi["ranking"]) == sorted(names) == sorted(psi["attributes"])
  # The summary lists the options that played a part: no CelebA, inversion or
  # Adam options for digits explained with a VAE by plain ascent.
  shown = summary["config"]
  assert list(shown["classes"]) == [4, 9] and shown["attack"]["step_size"] == 0.5
  for unused in ("target_attribute", "inversion_steps", "images"):
    assert unused not in shown
  assert shown["attack"] == config.attack.to_dict()
  magnitudes = [abs(psi["attributes"][name]["psi"]) for name in psi["ranking"]]
  assert magnitudes == sorted(magnitudes, reverse=True)
  for name in ("counterfactuals.png", "global_attributions.png"):
    with Image.open(os.path.join(config.out, name)) as image:
      assert image.size[0] > 200 and image.size[1] > 100
  assert set(summary["timings_s"]) >= {"inputs", "encode", "probes", "attack", "attributions"}


def test_a_change_of_result_options_is_refused_naming_them(small_run, tmp_path):
  config = config_like(small_run, tmp_path / "run", chunk_size=16)
  cfajax.explain(config, progress=False, log=None)
  changed = dataclasses.replace(config.attack, max_steps=61, threshold=0.7)
  with pytest.raises(ValueError, match=r"other options that change its results \(attack."
                     r"threshold: 0.9 -> 0.7; attack.max_steps: 200 -> 61\)"):
    cfajax.explain(config, progress=False, log=None, attack=changed)
  restarted = cfajax.explain(config, progress=False, log=None, restart=True,
                             attack=dataclasses.replace(config.attack, max_steps=61))
  assert restarted["num_resumed"] == 0 and restarted["config"]["attack"]["max_steps"] == 61
  # The models came from elsewhere (vae=, classifier=): a restart keeps them.
  assert os.path.exists(config.generator)


def test_options_that_change_no_result_do_not_block_a_resume(small_run, tmp_path):
  config = config_like(small_run, tmp_path / "run", chunk_size=16)
  first = cfajax.explain(config, progress=False, log=None)
  messages = []
  again = cfajax.explain(config, progress=False, log=messages.append, num_bootstrap=50,
                         num_figure_examples=3, pool_size=8, probe_c=0.5,
                         data_dir=str(tmp_path))
  assert again["num_resumed"] == first["num_examples"]
  assert any("change no saved result" in m and "pool_size: 32 -> 8" in m for m in messages)


KILL_AFTER_TWO_CHUNKS = textwrap.dedent("""
    import json, os, signal, sys
    import cfajax
    from cfajax import _explain, _runfolder
    saved = []
    original = _runfolder.save_npz
    def save_then_die(path, **arrays):
      original(path, **arrays)
      if "chunks" in path:
        saved.append(path)
        if len(saved) == 2:
          os.kill(os.getpid(), signal.SIGKILL)
    _runfolder.save_npz = save_then_die
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
  # What a write killed half-way leaves; a successful rerun removes it.
  (tmp_path / "killed" / "chunks" / "attack-00002.npz.tmp-99999").write_bytes(b"half")
  (tmp_path / "killed" / "summary.json.tmp-99999").write_text("{")

  resumed = cfajax.explain(killed, progress=False, log=None)
  leftovers = [p for p in (tmp_path / "killed").rglob("*") if ".tmp-" in p.name]
  assert leftovers == []
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
  for worker, (out, err) in zip(workers, outputs, strict=True):
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
                                   widths=(4,), dense_width=8,
                                   output_names=("Young", "Male", "Bald"))
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


# -- resuming is right by construction -------------------------------------------


CHUNK_ATTACK = cfajax.attacks.LatentAttack(max_steps=30, threshold=0.8, step_size=0.5)


def chunk_task(n=40, seed=0):
  from attack_test import latents
  from attack_test import mlp_models
  decode, classify = mlp_models(seed=seed)
  return (decode, classify, np.asarray(latents(n, seed=seed + 1)),
          (np.arange(n) % 3).astype(np.int32))


def chunked(config, decode, classify, messages):
  """The explanation's chunked attack on given latents, as explain runs it."""
  from cfajax import _runfolder
  from cfajax import attacks
  attack = config.attack
  run_chunk = attack.runner(attacks.AttackModels(decode, classify, None, {}), config.pool_size)
  return lambda z, target, models="m": _runfolder.attack_in_chunks(
      config.out, run_chunk, z, target, chunk_size=config.chunk_size,
      attack_digest=cfajax._hashing.digest_json(attack.options()), models_digest=models,
      log=messages.append)


def test_a_chunk_is_reused_only_for_the_inputs_it_was_computed_from(tmp_path):
  # Latents shifted by 3 under the same options used to resume 8 of 8 chunks
  # and return the old counterfactuals.
  decode, classify, z, target = chunk_task()
  config = ExplainConfig(out=str(tmp_path), chunk_size=5, pool_size=4, attack=CHUNK_ATTACK)
  messages = []
  run = chunked(config, decode, classify, messages)
  first, resumed = run(z, target)
  assert resumed == 0
  again, resumed = run(z, target)
  assert resumed == 40
  for name in first:
    np.testing.assert_array_equal(again[name], first[name])
  shifted, resumed = run(z + 3, target)
  assert resumed == 0 and "8 from other latents or targets" in messages[-1]
  fresh = cfajax.counterfactual_attack(decode, classify, z + 3, target, batch_size=4,
                                       **config.attack.options())
  np.testing.assert_array_equal(shifted["z_cf"], fresh.z)
  _, resumed = run(z + 3, (target + 1) % 3)
  assert resumed == 0
  _, resumed = run(z + 3, (target + 1) % 3, models="other weights")
  assert resumed == 0 and "8 with other model weights" in messages[-1]


def test_copied_truncated_and_damaged_chunks_are_recomputed(tmp_path):
  decode, classify, z, target = chunk_task(n=23)
  config = ExplainConfig(out=str(tmp_path), chunk_size=5, pool_size=4, attack=CHUNK_ATTACK)
  messages = []
  run = chunked(config, decode, classify, messages)
  whole, _ = run(z, target)
  chunks = tmp_path / "chunks"
  # A valid chunk copied over another, the short last chunk over the first, a
  # flipped byte in a third: each is caught and recomputed.
  shutil.copy(chunks / "attack-00000.npz", chunks / "attack-00001.npz")
  last = (chunks / "attack-00004.npz").read_bytes()
  (chunks / "attack-00000.npz").write_bytes(last)
  data = bytearray((chunks / "attack-00002.npz").read_bytes())
  data[len(data) // 2] ^= 0xFF
  (chunks / "attack-00002.npz").write_bytes(bytes(data))
  again, resumed = run(z, target)
  assert resumed == 23 - 15
  assert "2 for other rows" in messages[-1] and "1 damaged" in messages[-1]
  for name in whole:
    np.testing.assert_array_equal(again[name], whole[name])


def test_a_checkpoint_replaced_between_runs_recomputes_every_chunk(small_run, tmp_path):
  models = tmp_path / "models"
  shutil.copytree(os.path.join(small_run[0].out, "models"), models)
  config = config_like(small_run, tmp_path / "run", chunk_size=16,
                       generator=str(models / "vae"), classifier=str(models / "classifier"))
  first = cfajax.explain(config, progress=False, log=None)
  # Replaced at the same path by a classifier that differs a little (as a
  # retrained one would, but without the training time).
  classifier = cfajax.load_model(models / "classifier")
  classifier.logits.bias[...] = classifier.logits.bias[...] + 0.05
  cfajax.save_model(models / "classifier", classifier)
  messages = []
  second = cfajax.explain(config, progress=False, log=messages.append)
  assert second["num_resumed"] == 0
  assert any("the classifier" in m and "recomputed" in m for m in messages)
  with open(tmp_path / "run" / "run.json") as f:
    record = json.load(f)
  assert record["models"]["classifier"]["digest"] == second["models"]["classifier"]["digest"] \
      != first["models"]["classifier"]["digest"]
  assert second["models"]["classifier"]["weights_sha256"] != \
      first["models"]["classifier"]["weights_sha256"]


def test_an_unreadable_run_json_is_named(small_run, tmp_path):
  config = config_like(small_run, tmp_path / "run", chunk_size=16)
  cfajax.explain(config, progress=False, log=None)
  run_json = tmp_path / "run" / "run.json"
  run_json.write_text(run_json.read_text()[:40])
  with pytest.raises(ValueError, match=f"{run_json} is unreadable .*--restart"):
    cfajax.explain(config, progress=False, log=None)
  assert cfajax.explain(config, progress=False, log=None, restart=True)["num_resumed"] == 0


HOLD_THE_LOCK = textwrap.dedent("""
    import sys, time
    from cfajax import _runfolder
    with _runfolder.FolderLock(sys.argv[1]):
      print("locked", flush=True)
      time.sleep(120)
""")


def test_a_second_writer_is_refused_until_the_first_is_gone(small_run, tmp_path):
  config = config_like(small_run, tmp_path / "run", chunk_size=16)
  os.makedirs(config.out)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, config.out], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=f"being written by another cfajax explain "
                       f"\\(pid {holder.pid} on "):
      cfajax.explain(config, progress=False, log=None)
  finally:
    holder.kill()  # SIGKILL: the kernel releases the lock
    holder.wait()
  assert cfajax.explain(config, progress=False, log=None)["num_examples"] > 0


# -- every option is checked before any work ----------------------------------------


@pytest.mark.parametrize("option, value, match", [
    ("classes", (4, 12), r"classes \(4, 12\) do not exist in the classifier, which has 10"),
    ("classes", (4,), r"classes must hold 2 integers; got \(4,\)"),
    ("threshold", 1.5, r"threshold must be in \(0, 1\); got 1.5"),
    ("threshold", "0.5", "threshold must be a number; got str '0.5'"),
    ("max_steps", -1, r"max_steps must be an integer in \[0, 2147483647\]; got -1"),
    ("max_steps", 2**40, r"max_steps must be an integer in \[0, 2147483647\]"),
    ("pool_size", 0, r"pool_size must be an integer in \[1, "),
    ("objective", "margin", "objective must be one of 'logit', 'prob', 'log_prob'; got str"),
    ("probe_c", 0, "probe_c must be a finite number > 0"),
    ("num_bootstrap", -1, r"num_bootstrap must be an integer in \[0, "),
    ("target_attribute", "Youngish", "target_attribute must be one of CelebA's attributes"),
    ("dataset", "cifar", "dataset must be one of 'digits', 'mnist', 'celeba'"),
    ("attack", "dip", "attack must be one of 'latent', 'data-free', 'pixel'"),
    ("attack", ("pixel",), "attack must be a cfajax.attacks value"),
    ("tv_weight", -0.1, "tv_weight must be a finite number >= 0"),
])
def test_invalid_options_are_refused_before_any_work(tmp_path, option, value, match):
  out = tmp_path / "never"
  options = {option: value}
  if option == "target_attribute":
    options["dataset"] = "celeba"
  # An attack's option is checked by its value.
  for attack in (cfajax.attacks.LatentAttack, cfajax.attacks.DataFreeAttack):
    if option in {f.name for f in dataclasses.fields(attack)}:
      options = {"attack": attack(**options)}
      break
  with pytest.raises(ValueError, match=match):
    cfajax.explain(out=str(out), progress=False, log=None, **options)
  assert not out.exists()  # nothing loaded, trained or written


def test_named_checkpoints_are_checked_before_any_work(small_run, tmp_path):
  config = config_like(small_run, tmp_path / "never")
  with pytest.raises(ValueError, match=r"classes \(4, 12\) do not exist in the classifier at "
                     ".*which has 10 classes"):
    cfajax.explain(config, progress=False, log=None, classes=(4, 12))
  with pytest.raises(FileNotFoundError, match="no checkpoint at"):
    cfajax.explain(config, progress=False, log=None, vae=str(tmp_path / "absent"))
  with pytest.raises(ValueError, match=r"takes images of shape \[8, 8, 1\]; mnist images are "
                     r"\[28, 28, 1\]"):
    cfajax.explain(config, progress=False, log=None, dataset="mnist")
  with pytest.raises(ValueError, match=r"unknown explain options \['max_step'\]"):
    cfajax.explain(config, progress=False, log=None, max_step=3)
  assert not (tmp_path / "never").exists()


def test_the_cli_reports_a_bad_option_in_one_line(tmp_path, capsys):
  from cfajax._cli import main
  assert main(["explain", "--out", str(tmp_path / "x"), "--classes", "4"]) == 2
  err = capsys.readouterr().err
  assert err.strip() == "cfajax explain: error: classes must hold 2 integers; got (4,)"


# -- what the outputs may not claim ----------------------------------------------------


def test_non_finite_counterfactuals_flip_no_decision(small_run, tmp_path, monkeypatch):
  from cfajax import _attack
  attack = _attack.counterfactual_attack

  def poisoned(*args, **kwargs):  # the first two latents of every chunk go non-finite
    result = attack(*args, **kwargs)
    z = np.asarray(result.z).copy()
    z[:2] = np.nan
    status = np.asarray(result.status).copy()
    status[:2] = cfajax.Status.NON_FINITE
    return dataclasses.replace(result, z=z, status=status)

  monkeypatch.setattr(_attack, "counterfactual_attack", poisoned)  # what LatentAttack runs
  config = config_like(small_run, tmp_path / "run", chunk_size=16, num_figure_examples=8)
  summary = cfajax.explain(config, progress=False, log=None)
  examples = np.load(tmp_path / "run" / "examples.npz")
  bad = examples["status"] == cfajax.Status.NON_FINITE
  assert bad.sum() == 2 * -(-summary["num_examples"] // 16)
  assert np.all(np.isnan(examples["counterfactual_prob"][bad]))
  good = ~bad
  flipped = ((examples["counterfactual_prob"][good] >= 0.5)
             != (examples["original_prob"][good] >= 0.5))
  assert summary["decision_flipped"] == pytest.approx(flipped.sum() / summary["num_examples"])
  assert summary["status_counts"]["NON_FINITE"] == bad.sum()


def test_the_figure_never_shows_a_failed_attack_as_a_counterfactual(tmp_path):
  from cfajax import _plots
  rng = np.random.default_rng(0)
  images = rng.random((6, 8, 8, 1)).astype(np.float32)
  cf = images.copy()
  cf[1] = np.nan
  status = np.array([0, 3, 1, 0, 0, 1])
  prob = rng.random(6)
  columns = _plots.counterfactual_grid(str(tmp_path / "grid.png"), images, images, cf, prob,
                                       prob, status, count=4, seed=0)
  assert sorted(i for i, label in columns if label == "") == [0, 3, 4]
  assert {label for i, label in columns if label} <= {"NON_FINITE", "MAX_STEPS"}
  assert len(columns) == 4
  only = _plots.counterfactual_grid(str(tmp_path / "grid2.png"), images, images, cf, prob, prob,
                                    status, count=3, seed=0)
  assert [label for _, label in only] == ["", "", ""]


def test_explain_trains_the_classifier_that_cfajax_train_makes(small_run, tmp_path):
  # One recipe: the same data half and seed, so the same weights bit for bit.
  from cfajax._cli import main
  assert main(["train", "classifier", "--dataset", "digits", "--epochs", "15", "--widths",
               "8,16", "--batch-size", "32", "--no-progress", "--out",
               str(tmp_path / "classifier")]) == 0
  by_cli = cfajax.read_checkpoint_info(tmp_path / "classifier")
  by_explain = cfajax.read_checkpoint_info(os.path.join(small_run[0].out, "models", "classifier"))
  assert by_cli["config"] == by_explain["config"]
  assert by_cli["weights_sha256"] == by_explain["weights_sha256"]


def test_a_limit_explains_a_seeded_subset_with_both_sides_in_proportion(small_run, tmp_path):
  config, full = small_run
  summary = cfajax.explain(config_like(small_run, tmp_path / "limited", limit=20),
                           progress=False, log=None)
  assert summary["num_examples"] == 20
  assert summary["num_candidates"] == full["num_examples"]
  limited = np.load(tmp_path / "limited" / "examples.npz")
  every = np.load(os.path.join(config.out, "examples.npz"))
  assert set(limited["index"]) <= set(every["index"])
  share = np.mean(every["target"] == 9)
  assert abs(np.sum(limited["target"] == 9) - 20 * share) <= 1


def test_a_subset_keeps_the_sides_in_proportion_and_is_seeded():
  from cfajax._task import DecisionTask
  task = DecisionTask(1, (0, 1))
  logits = np.r_[np.full(30, -2.0), np.full(70, 2.0)][:, None]
  rows = task.subset(logits, 10, seed=3)
  assert len(rows) == 10 and np.all(np.diff(rows) > 0)
  assert np.sum(rows < 30) == 3
  np.testing.assert_array_equal(rows, task.subset(logits, 10, seed=3))
  assert not np.array_equal(rows, task.subset(logits, 10, seed=4))
  np.testing.assert_array_equal(task.subset(logits, 500, seed=0), np.arange(100))


def test_chunks_default_to_a_tenth_of_the_run_within_bounds():
  from cfajax._runfolder import chunk_size_for
  assert chunk_size_for(100, 0) == 256
  assert chunk_size_for(5000, 0) == 500
  assert chunk_size_for(200_000, 0) == 8192
  assert chunk_size_for(5000, 64) == 64


def test_a_classifier_that_calls_nearly_everything_one_class_is_warned_about():
  from cfajax._explain_stages import _warn_if_one_sided
  from cfajax._task import DecisionTask
  messages = []
  task = DecisionTask(10, (4, 9))
  logits = np.zeros((100, 10))
  logits[:, 9] = 1.0
  logits[:3, 4] = 2.0  # 97 of 100 predicted 9
  _warn_if_one_sided(task, logits, messages.append)
  assert len(messages) == 1 and "97.0% of the 100 examples" in messages[0]
  assert "class 9" in messages[0]
  logits[:10, 4] = 2.0  # 90 of 100: no warning
  _warn_if_one_sided(task, logits, messages.append)
  assert len(messages) == 1


def test_quick_fills_only_what_was_left_at_zero():
  from cfajax._explain_config import with_quick_defaults
  plain = ExplainConfig(dataset="mnist", out="x")
  assert with_quick_defaults(plain) == plain
  quick = with_quick_defaults(ExplainConfig(dataset="mnist", out="x", quick=True))
  assert (quick.limit, quick.vae_epochs, quick.classifier_epochs) == (1000, 2, 1)
  mine = with_quick_defaults(ExplainConfig(dataset="mnist", out="x", quick=True, limit=50,
                                           vae_epochs=3))
  assert (mine.limit, mine.vae_epochs, mine.classifier_epochs) == (50, 3, 1)
  custom = with_quick_defaults(ExplainConfig(out="x", images="faces/", quick=True))
  assert (custom.limit, custom.vae_epochs) == (1000, 0)


def test_the_positive_side_is_named_for_figures_and_warnings():
  from cfajax._task import DecisionTask
  assert DecisionTask(10, (4, 9)).side_name(True) == "class 9"
  assert DecisionTask(10, (4, 9)).side_name(False) == "class 4"
  assert DecisionTask(1, (0, 1), name="Young").side_name(True) == "Young"
  assert DecisionTask(1, (0, 1), name="Young").side_name(False) == "not Young"


def test_rows_from_both_splits_name_their_split(small_run, tmp_path):
  cfajax.explain(config_like(small_run, tmp_path / "all", explain_split="all", limit=30),
                 progress=False, log=None)
  examples = np.load(tmp_path / "all" / "examples.npz")
  train, test = cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)
  for split, data in (("train", train), ("test", test)):
    rows = examples["split"] == split
    assert rows.any()
    row = {int(i): k for k, i in enumerate(data.ids)}
    np.testing.assert_array_equal(examples["label"][rows],
                                  data.labels[[row[int(i)] for i in examples["ids"][rows]]])


def test_image_attacks_explain_through_the_encoder_and_resume(small_run, tmp_path):
  # The data-free and pixel attacks change the images themselves; phi is measured
  # by encoding x and x' with the generator, so z' is E(x'), never decode's input.
  config, _ = small_run
  vae = cfajax.load_model(os.path.join(config.out, "models", "vae"))
  data_free = cfajax.attacks.DataFreeAttack(prior="pixels", max_steps=60)
  for attack in (data_free, cfajax.attacks.PixelAttack(step_size=0.05, max_steps=60)):
    out = tmp_path / attack.name
    summary = cfajax.explain(config_like(small_run, out, attack=attack, limit=24),
                             progress=False, log=None)
    assert summary["attack"] == attack.name and "for measurement only" in summary[
        "attribution_measurement"]
    examples = np.load(out / "examples.npz")
    images = examples["counterfactual_images"]
    assert images.shape == (24, 8, 8, 1) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_allclose(examples["z_cf"], apply_batched(vae.encode, images), rtol=1e-5,
                               atol=1e-6)
    success = examples["status"] == cfajax.Status.REACHED
    assert success.mean() > 0.5, success.mean()
    flipped = (examples["counterfactual_prob"] >= 0.5) == (examples["target"] == 9)
    assert np.all(flipped[success])
    again = cfajax.explain(config_like(small_run, out, attack=attack, limit=24),
                           progress=False, log=None)
    assert again["num_resumed"] == 24
  no_duq = dataclasses.replace(data_free, manifold=str(tmp_path / "no-duq"))
  with pytest.raises(FileNotFoundError, match="train one with `cfajax train duq`"):
    cfajax.explain(config_like(small_run, tmp_path / "never", attack=no_duq), progress=False,
                   log=None)
  assert not (tmp_path / "never").exists()
  with pytest.raises(ValueError, match=r"attack.tv_weight: 0.05 -> 0.5"):
    cfajax.explain(config_like(small_run, tmp_path / "data-free", limit=24,
                               attack=dataclasses.replace(data_free, tv_weight=0.5)),
                   progress=False, log=None)


@pytest.mark.parametrize("value, fields", [
    (cfajax.attacks.LatentAttack(optimizer="ascent", step_size=0.5, max_steps=200),
     dict(attack="latent", optimizer="ascent", step_size=0.5, max_steps=200)),
    (cfajax.attacks.PixelAttack(optimizer="adam", step_size=0.02, max_steps=40),
     dict(attack="pixel", optimizer="adam", learning_rate=0.02, max_steps=40)),
])
def test_the_deprecated_flat_options_give_the_run_of_their_value(small_run, tmp_path, value,
                                                                 fields):
  # The attack's options as keywords of their own, the form before attack values: still
  # accepted, with a warning, and the same run as the value's.
  by_value = cfajax.explain(config_like(small_run, tmp_path / "value"), attack=value,
                            progress=False, log=None)
  with pytest.warns(DeprecationWarning, match="pass attack=cfajax.attacks."
                    + type(value).__name__):
    by_fields = cfajax.explain(config_like(small_run, tmp_path / "fields"), progress=False,
                               log=None, **fields)
  assert by_value["attack"] == by_fields["attack"] == value.name
  drop_out = lambda c: {k: v for k, v in c.items() if k != "out"}
  assert drop_out(by_value["config"]) == drop_out(by_fields["config"])
  a, b = (np.load(tmp_path / name / "examples.npz") for name in ("value", "fields"))
  np.testing.assert_array_equal(a["z_cf"], b["z_cf"])
  np.testing.assert_array_equal(a["status"], b["status"])
  with open(tmp_path / "value" / "run.json") as f:
    recorded = json.load(f)["config"]
  assert recorded["attack"] == value.to_dict()


def test_a_run_folder_from_before_attack_values_resumes(small_run, tmp_path):
  # run.json held the attack's options as fields of their own; a folder written so resumes
  # every chunk (same attack digest), and a changed option there is still refused.
  attack = cfajax.attacks.LatentAttack(optimizer="adam", step_size=0.02, max_steps=40)
  config = config_like(small_run, tmp_path / "old", attack=attack, limit=30)
  first = cfajax.explain(config, progress=False, log=None)
  run_json = tmp_path / "old" / "run.json"
  record = json.loads(run_json.read_text())
  record["config"].pop("attack")
  record["config"].update(cfajax.attacks.flat(attack))
  assert record["config"]["learning_rate"] == 0.02 and "step_size" not in record["config"]
  run_json.write_text(json.dumps(record))
  again = cfajax.explain(config, progress=False, log=None)
  assert again["num_resumed"] == first["num_examples"] == 30
  run_json.write_text(json.dumps(record))
  with pytest.raises(ValueError, match=r"attack.max_steps: 40 -> 41"):
    cfajax.explain(config, attack=dataclasses.replace(attack, max_steps=41), progress=False,
                   log=None)


def test_an_attack_that_is_not_an_attack_value_is_refused_before_any_work(small_run, tmp_path):
  with pytest.raises(ValueError, match="attack must be a cfajax.attacks value"):
    cfajax.explain(config_like(small_run, tmp_path / "never"), attack=("pixel",),
                   progress=False, log=None)
  with pytest.raises(ValueError, match="optimizer"):
    cfajax.explain(config_like(small_run, tmp_path / "never"),
                   attack=cfajax.attacks.LatentAttack(optimizer="sgd"), progress=False, log=None)
  assert not (tmp_path / "never").exists()
