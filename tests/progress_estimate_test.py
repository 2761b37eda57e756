"""Progress bars' remaining-time estimate follows the loop's iterations, not bursts of latents."""

import numpy as np
import pytest

import cfajax
from cfajax import _scheduler
from cfajax._scheduler import remaining_seconds


def test_uniform_latents_are_estimated_exactly_at_every_iteration():
  # 8 latents of 500 steps each, a pool of 4: two waves of 500 iterations. No
  # latent stops before iteration 500, so a rate of latents finished says
  # nothing until then, and after it one burst of 4 is all it has.
  mean_steps, width, latents = 500, 4, 8
  for done in range(0, 2 * mean_steps, 37):
    wave, into = divmod(done, mean_steps)
    queued = latents - width * (wave + 1)
    busy = np.full(width, into)
    estimate = remaining_seconds(queued, busy, mean_steps, width, seconds_per_iteration=0.5)
    assert estimate == pytest.approx((2 * mean_steps - done) * 0.5), done


def test_the_tail_is_the_slowest_busy_latent_however_wide_the_pool():
  # Queue empty; of three busy latents one has 8 of its mean 10 steps to go.
  assert remaining_seconds(0, [2, 9, 30], 10.0, 64, 1.0) == pytest.approx(8.0)
  # A queue of 100 through 10 slots: 100 latents' steps over 10 a step, plus the busy ones'.
  assert remaining_seconds(100, [5] * 10, 10.0, 10, 0.1) == pytest.approx((1000 + 50) / 10 * 0.1)
  assert remaining_seconds(0, [], 10.0, 4, 1.0) == 0.0


class Bar:
  """Records what a tqdm bar is told; `total` and `n` as tqdm has them."""

  def __init__(self, total):
    self.total, self.n, self.postfixes = total, 0, []

  def update(self, count):
    self.n += count

  def set_postfix_str(self, text):
    self.postfixes.append(text)


def test_the_inversion_bar_counts_every_start_and_shows_an_estimate(monkeypatch):
  monkeypatch.setattr(_scheduler, "SEGMENT_SECONDS", 1e-9)  # one iteration a segment
  a = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  decode = lambda z: (z @ a).reshape(-1, 2, 2, 1)
  images = np.random.default_rng(1).random((6, 2, 2, 1)).astype(np.float32)
  bar = Bar(total=12)
  cfajax.invert(decode, images, latent_dim=3, starts=2, max_steps=20, batch_size=4, progress=bar)
  assert bar.n == 12
  # The first segment compiles and has no rate; after it every one estimates.
  assert "left" not in bar.postfixes[0]
  assert all(", ~00:" in text and text.endswith(" left") for text in bar.postfixes[1:])
  assert len(bar.postfixes) > 3 * 20
