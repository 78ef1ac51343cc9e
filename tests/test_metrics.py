"""Tests for magvit_jax.metrics: frechet, scores (IS, precision/recall), image (PSNR, SSIM)."""

import numpy as np
import pytest
import scipy.linalg

import jax
import jax.numpy as jnp

from magvit_jax.metrics import frechet
from magvit_jax.metrics import image
from magvit_jax.metrics import scores


def _random_gaussian_features(rng, n, d, shift=0.0):
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mix + rng.normal(size=(d,)) + shift


def _scipy_frechet(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1 + s2 - 2.0 * np.real(covmean)))


# ---------------------------------------------------------------- Frechet


def test_feature_statistics_matches_numpy_and_chunking():
  rng = np.random.default_rng(0)
  x = _random_gaussian_features(rng, 1001, 8).astype(np.float32)
  mu, sigma = frechet.feature_statistics(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  assert mu.shape == (8,) and sigma.shape == (8, 8)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mu, x64.mean(axis=0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-10, atol=1e-12)
  mu_c, sigma_c = frechet.feature_statistics(jnp.asarray(x), chunk_size=97)
  np.testing.assert_allclose(mu_c, mu, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(sigma_c, sigma, rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(sigma, sigma.T)


def test_frechet_matches_scipy_sqrtm():
  rng = np.random.default_rng(1)
  f1 = _random_gaussian_features(rng, 2000, 16)
  f2 = _random_gaussian_features(rng, 2000, 16, shift=0.3)
  mu1, s1 = frechet.feature_statistics(f1)
  mu2, s2 = frechet.feature_statistics(f2)
  ours = frechet.frechet_distance(mu1, s1, mu2, s2)
  ref = _scipy_frechet(mu1, s1, mu2, s2)
  assert isinstance(ours, float)
  assert ours > 0
  assert abs(ours - ref) <= 1e-6 * abs(ref)
  assert ours == pytest.approx(frechet.frechet_distance_from_features(f1, f2), rel=1e-12)


def test_frechet_self_is_zero_and_symmetric():
  rng = np.random.default_rng(2)
  mu1, s1 = frechet.feature_statistics(_random_gaussian_features(rng, 500, 16))
  mu2, s2 = frechet.feature_statistics(_random_gaussian_features(rng, 500, 16))
  assert abs(frechet.frechet_distance(mu1, s1, mu1, s1)) < 1e-8
  d12 = frechet.frechet_distance(mu1, s1, mu2, s2)
  d21 = frechet.frechet_distance(mu2, s2, mu1, s1)
  assert d12 == pytest.approx(d21, rel=1e-9)


def test_frechet_closed_form_commuting_covariances():
  rng = np.random.default_rng(3)
  d = 12
  a = rng.uniform(0.1, 3.0, size=d)
  b = rng.uniform(0.1, 3.0, size=d)
  mu = rng.normal(size=d)
  expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + mu @ mu)
  got = frechet.frechet_distance(mu, np.diag(a), np.zeros(d), np.diag(b))
  assert got == pytest.approx(expected, rel=1e-12)
  # Rotating both Gaussians by the same orthogonal matrix changes nothing.
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  got_rot = frechet.frechet_distance(
    q @ mu, q @ np.diag(a) @ q.T, np.zeros(d), q @ np.diag(b) @ q.T
  )
  assert got_rot == pytest.approx(expected, rel=1e-10)


def test_frechet_singular_covariances():
  # Rank-deficient covariances (as from n < d samples): still finite and exact.
  a = np.array([0.0, 0.0, 1.0, 4.0, 2.0])
  b = np.array([0.0, 9.0, 0.0, 1.0, 2.0])
  expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
  got = frechet.frechet_distance(np.zeros(5), np.diag(a), np.zeros(5), np.diag(b))
  assert got == pytest.approx(expected, rel=1e-12)
  rng = np.random.default_rng(4)
  mu1, s1 = frechet.feature_statistics(rng.normal(size=(4, 10)))
  mu2, s2 = frechet.feature_statistics(rng.normal(size=(6, 10)))
  fd = frechet.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(fd) and fd > 0
  assert abs(frechet.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


@pytest.mark.parametrize(
  'args, name',
  [
    ((np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), 'mu1'),
    ((np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)), 'sigma1'),
    ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(3)), 'mu2'),
    ((np.zeros(3), np.eye(3), np.zeros(3), np.ones((3, 2))), 'sigma2'),
  ],
)
def test_frechet_shape_errors(args, name):
  with pytest.raises(ValueError, match=name):
    frechet.frechet_distance(*args)


def test_feature_statistics_errors():
  with pytest.raises(ValueError, match=r'\[n, d\]'):
    frechet.feature_statistics(np.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match='n >= 2'):
    frechet.feature_statistics(np.zeros((1, 3)))
  with pytest.raises(ValueError, match='NaN'):
    frechet.feature_statistics(np.full((3, 2), np.nan))


# ---------------------------------------------------------------- Inception Score


def test_inception_score_uniform_is_one():
  mean, std = scores.inception_score(np.full((100, 10), 0.1), num_splits=10)
  assert abs(mean - 1.0) < 1e-9
  assert abs(std) < 1e-9


def test_inception_score_even_one_hot_is_k():
  k = 10
  probs = np.eye(k)[np.arange(200) % k]  # every split of 20 holds each class twice
  mean, std = scores.inception_score(jnp.asarray(probs, jnp.float32), num_splits=10)
  assert mean == pytest.approx(k, rel=1e-9)
  assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_direct_formula():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(60, 7)) * 2
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  per_split = []
  for part in np.array_split(probs, 3):
    py = part.mean(axis=0)
    per_split.append(np.exp(np.mean(np.sum(part * np.log(part / py), axis=1))))
  mean, std = scores.inception_score(probs, num_splits=3)
  assert mean == pytest.approx(np.mean(per_split), rel=1e-12)
  assert std == pytest.approx(np.std(per_split), rel=1e-9)
  assert 1.0 <= mean <= 7.0


def test_inception_score_errors():
  with pytest.raises(ValueError, match='num_splits'):
    scores.inception_score(np.full((5, 2), 0.5), num_splits=6)
  with pytest.raises(ValueError, match='sum to 1'):
    scores.inception_score(np.ones((5, 2)), num_splits=1)
  with pytest.raises(ValueError, match=r'\[n, k\]'):
    scores.inception_score(np.ones(5), num_splits=1)


# ---------------------------------------------------------------- precision / recall


def _modes(rng, centers, per_mode, scale=0.1):
  return np.concatenate([c + scale * rng.normal(size=(per_mode, len(c))) for c in centers])


def test_precision_recall_identical_sets():
  x = np.random.default_rng(6).normal(size=(300, 8))
  assert scores.precision_recall(x, x.copy(), k=3, chunk_size=64) == (1.0, 1.0)


def test_precision_recall_disjoint_clusters():
  rng = np.random.default_rng(7)
  real = rng.normal(size=(200, 4))
  fake = rng.normal(size=(150, 4)) + 100.0
  assert scores.precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_half_of_the_modes():
  rng = np.random.default_rng(8)
  centers = 20.0 * np.eye(4)
  real = _modes(rng, centers, 250)
  # A fake set made of the real samples of two of the four modes: exact.
  fake_exact = real[:500]
  assert scores.precision_recall(real, fake_exact, k=3) == (1.0, 0.5)
  # Fresh samples from two of the four modes: approximately (in 2-D, where a
  # finite k-NN manifold misses little of its distribution's tails; in higher
  # d the estimator is known to sit a few percent below 1 and 0.5).
  corners = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
  real = _modes(rng, corners, 250)
  fake = _modes(rng, corners[:2], 250)
  precision, recall = scores.precision_recall(real, fake, k=3, chunk_size=128)
  assert precision >= 0.95
  assert abs(recall - 0.5) <= 0.05


def test_precision_recall_errors():
  with pytest.raises(ValueError, match='fake'):
    scores.precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
  with pytest.raises(ValueError, match='more than k'):
    scores.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# ---------------------------------------------------------------- PSNR


def test_psnr_identical_is_inf():
  x = np.random.default_rng(9).uniform(size=(3, 8, 8, 3))
  p = image.psnr(x, x)
  assert p.shape == (3,) and p.dtype == np.float64
  assert np.all(np.isinf(p)) and np.all(p > 0)


@pytest.mark.parametrize('shape', [(2, 16), (2, 8, 8, 3), (2, 4, 8, 8, 3)])
def test_psnr_constant_offset(shape):
  x = np.random.default_rng(10).uniform(size=shape).astype(np.float32)
  offsets = np.array([0.1, 0.01], np.float32)
  y = x + offsets.reshape((2,) + (1,) * (len(shape) - 1))
  p = image.psnr(x, y)
  np.testing.assert_allclose(p, 10 * np.log10(1.0 / offsets.astype(np.float64) ** 2), atol=1e-4)
  # Dynamic range enters as max_value^2.
  np.testing.assert_allclose(image.psnr(255 * x, 255 * y, max_value=255.0), p, atol=1e-4)


# ---------------------------------------------------------------- SSIM


def _smooth_images(rng, shape):
  """Structured images in [0, 1]: sums of random low-frequency sinusoids."""
  b, h, w, c = shape[0], shape[-3], shape[-2], shape[-1]
  lead = shape[:-3]
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  out = np.zeros(lead + (h, w, c))
  for _ in range(4):
    fy, fx = rng.uniform(0.05, 0.4, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=lead + (1, 1, c))
    out += np.sin(fy * yy[..., None] + fx * xx[..., None] + phase)
  del b
  return (out - out.min()) / (out.max() - out.min())


def test_ssim_identical_is_one():
  x = _smooth_images(np.random.default_rng(11), (2, 24, 20, 3))
  s = image.ssim(x, x)
  assert s.shape == (2,) and s.dtype == np.float64
  np.testing.assert_allclose(s, 1.0, atol=1e-12)


def test_ssim_symmetric_and_decreasing_with_noise():
  rng = np.random.default_rng(12)
  x = _smooth_images(rng, (2, 24, 24, 3))
  noise = rng.normal(size=x.shape)
  y_small = x + 0.05 * noise
  y_large = x + 0.2 * noise
  np.testing.assert_allclose(image.ssim(x, y_small), image.ssim(y_small, x), rtol=1e-12)
  s_small, s_large = image.ssim(x, y_small), image.ssim(x, y_large)
  assert np.all(s_small < 1.0) and np.all(s_large < s_small) and np.all(s_large > -1.0)


def test_ssim_constant_images_closed_form():
  mu1, mu2 = 0.3, 0.7
  x = np.full((1, 16, 16, 3), mu1)
  y = np.full((1, 16, 16, 3), mu2)
  c1 = (0.01 * 1.0) ** 2
  expected = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)
  np.testing.assert_allclose(image.ssim(x, y), [expected], rtol=1e-10)
  # Same with a dynamic range of 255.
  c1 = (0.01 * 255.0) ** 2
  expected = (2 * 76.0 * 178.0 + c1) / (76.0**2 + 178.0**2 + c1)
  got = image.ssim(
    np.full((1, 12, 12, 1), 76, np.uint8), np.full((1, 12, 12, 1), 178, np.uint8), max_value=255.0
  )
  np.testing.assert_allclose(got, [expected], rtol=1e-10)


def test_ssim_matches_direct_window_computation():
  """Separable filtering vs an explicit loop over 11x11 windows (2x3 positions, 2 channels)."""
  rng = np.random.default_rng(13)
  x = rng.uniform(size=(1, 12, 13, 2))
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
  r = np.arange(11) - 5.0
  g = np.exp(-(r**2) / (2 * 1.5**2))
  win = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = 0.01**2, 0.03**2
  values = []
  for ch in range(2):
    for i in range(2):
      for j in range(3):
        px, py = x[0, i : i + 11, j : j + 11, ch], y[0, i : i + 11, j : j + 11, ch]
        mx, my = np.sum(win * px), np.sum(win * py)
        vx, vy = np.sum(win * (px - mx) ** 2), np.sum(win * (py - my) ** 2)
        cxy = np.sum(win * (px - mx) * (py - my))
        values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
  np.testing.assert_allclose(image.ssim(x, y), [np.mean(values)], rtol=1e-10)


def test_ssim_video_is_mean_over_frames():
  rng = np.random.default_rng(14)
  x = _smooth_images(rng, (2, 3, 16, 16, 3))
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
  per_frame = np.stack([image.ssim(x[:, t], y[:, t]) for t in range(3)], axis=1)
  np.testing.assert_allclose(image.ssim(x, y), per_frame.mean(axis=1), rtol=1e-12)


def test_ssim_errors():
  with pytest.raises(ValueError, match='same shape'):
    image.ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match='>= 11'):
    image.ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match=r'\[b, h, w, c\]'):
    image.ssim(np.zeros((16, 16)), np.zeros((16, 16)))


def test_apply_in_batches_drops_padding_and_keeps_order():
  from magvit_jax.metrics.batching import apply_in_batches  # pylint: disable=g-import-not-at-top

  x = np.arange(20, dtype=np.float32).reshape(10, 2)
  calls = []

  def fn(v):
    calls.append(v.shape[0])
    return v * 2, v.sum(axis=1)

  doubled, sums = apply_in_batches(fn, x, 4)
  np.testing.assert_array_equal(doubled, x * 2)
  np.testing.assert_array_equal(sums, x.sum(axis=1))
  assert calls == [4, 4, 4]  # the last batch of 2 is padded to 4: one compiled shape


def test_psnr_is_one_function_for_numpy_jax_and_masks():
  """NumPy (float64) and JAX (float32, under jit) inputs agree; a mask scores its region only."""
  from magvit_jax.metrics.image import psnr  # pylint: disable=g-import-not-at-top

  rs = np.random.RandomState(0)
  x = rs.uniform(-1, 1, (3, 4, 5, 3))
  y = np.clip(x + rs.normal(0, 0.1, x.shape), -1, 1)
  ref = psnr(x, y, max_value=2.0)
  assert ref.dtype == np.float64 and ref.shape == (3,)
  by_hand = 10 * np.log10(4.0 / np.mean((x - y) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(ref, by_hand, rtol=1e-12)
  got = jax.jit(lambda a, b: psnr(a, b, max_value=2.0))(jnp.asarray(x), jnp.asarray(y))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
  # A mask over the first two rows equals the PSNR of the cropped arrays.
  mask = np.zeros((3, 4, 5, 1), bool)
  mask[:, :2] = True
  np.testing.assert_allclose(psnr(x, y, 2.0, mask=mask), psnr(x[:, :2], y[:, :2], 2.0), rtol=1e-12)


def test_model_space_psnr_equals_psnr_of_uint8_pixels():
  from magvit_jax.metrics.image import model_space_psnr, psnr  # pylint: disable=g-import-not-at-top

  rs = np.random.RandomState(1)
  a = rs.randint(0, 256, (2, 6, 6, 3))
  b = np.clip(a + rs.randint(-9, 10, a.shape), 0, 255)
  to_model = lambda u: u / 127.5 - 1.0  # noqa: E731
  np.testing.assert_allclose(model_space_psnr(to_model(a), to_model(b)), psnr(a, b, 255.0))
  # Out-of-range predictions are clipped first (a decoder may overshoot).
  np.testing.assert_allclose(
    model_space_psnr(to_model(a), to_model(b) * 3),
    model_space_psnr(to_model(a), np.clip(to_model(b) * 3, -1, 1)),
  )
