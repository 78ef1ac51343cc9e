"""Evaluation networks and metrics: Inception/I3D shapes and weight files, the
offline digits feature network, digits FID and the reference-statistics cache.

Light on CPU: the big networks are only traced (`jax.eval_shape`), the digits
network trains once per module (~300 small steps).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.metrics import convert_weights
from magvit_jax.metrics import digits_features as dfeat
from magvit_jax.metrics import frechet
from magvit_jax.metrics import i3d
from magvit_jax.metrics import inception
from magvit_jax.metrics import reference_stats

DIGITS = {'name': 'magvit_digits', 'data_dir': None, 'image_size': 32}


def _output_shapes(module, input_shape):
  """Shapes of module(x) with random init, traced only (nothing allocated)."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(lambda x: module.init_with_output(jax.random.PRNGKey(0), x)[0], x)


def test_inception_output_shapes():
  features, logits = _output_shapes(inception.InceptionV3(), (2, 299, 299, 3))
  assert features.shape == (2, 2048) and logits.shape == (2, 1008)
  shapes = inception.expected_weight_shapes()
  assert shapes['params/Conv2d_1a_3x3/conv/kernel'] == (3, 3, 3, 32)
  assert shapes['params/Mixed_7c/branch_pool/conv/kernel'] == (1, 1, 2048, 192)
  assert shapes['params/fc/kernel'] == (2048, 1008)
  assert sum(k.endswith('conv/kernel') for k in shapes) == 94  # torchvision's conv count


def test_i3d_output_shapes():
  features, logits = _output_shapes(i3d.I3D(), (1, 16, 224, 224, 3))
  assert features.shape == (1, 1024) and logits.shape == (1, 400)
  shapes = i3d.expected_weight_shapes()
  assert shapes['params/Conv3d_1a_7x7/conv/kernel'] == (7, 7, 7, 3, 64)
  assert shapes['params/Mixed_5c/Branch_3/Conv3d_0b_1x1/conv/kernel'] == (1, 1, 1, 832, 128)
  assert shapes['params/Logits/Conv3d_0c_1x1/kernel'] == (1, 1, 1, 1024, 400)


def test_weight_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05'):
    inception.load_inception_weights(str(tmp_path / 'missing.npz'))
  with pytest.raises(FileNotFoundError, match='kinetics-i3d'):
    i3d.load_i3d_weights(str(tmp_path / 'missing.npz'))
  bad = str(tmp_path / 'bad.npz')
  np.savez(
    bad,
    **{
      'params/Mixed_6b/branch7x7_2/conv/kernel': np.zeros((1, 5, 128, 128)),
      'params/fc/bias': np.zeros((1008,)),
    },
  )
  with pytest.raises(ValueError) as e:
    inception.load_inception_weights(bad)
  msg = str(e.value)
  assert 'params/Mixed_6b/branch7x7_2/conv/kernel' in msg
  assert 'expected shape (1, 7, 128, 128), found (1, 5, 128, 128)' in msg
  assert 'missing' in msg


def test_weight_round_trip_small(tmp_path):
  """A complete, correct file loads into variables the module applies (small net)."""
  abstract = jax.eval_shape(
    dfeat.DigitsFeatureNet().init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
  )
  flat = {
    name: np.full(shape, 0.01, np.float32)
    for name, (_, shape) in inception.flat_shapes(abstract).items()
  }
  path = str(tmp_path / 'w.npz')
  np.savez(path, **flat)
  variables = inception.load_npz_variables(path, abstract, 'digits', 'n/a')
  features, logits = dfeat.DigitsFeatureNet().apply(variables, jnp.zeros((2, 32, 32, 3)))
  assert features.shape == (2, 64) and logits.shape == (2, 10)
  np.savez(path, **flat, extra=np.zeros(3))
  with pytest.raises(ValueError, match='unexpected names'):
    inception.load_npz_variables(path, abstract, 'digits', 'n/a')


def test_convert_inception_names():
  state = {
    'Conv2d_1a_3x3.conv.weight': np.zeros((32, 3, 3, 3)),
    'Conv2d_1a_3x3.bn.weight': np.ones(32),
    'Conv2d_1a_3x3.bn.bias': np.zeros(32),
    'Conv2d_1a_3x3.bn.running_mean': np.zeros(32),
    'Conv2d_1a_3x3.bn.running_var': np.ones(32),
    'Conv2d_1a_3x3.bn.num_batches_tracked': np.zeros(()),
    'Mixed_6b.branch7x7_2.conv.weight': np.zeros((128, 128, 1, 7)),
    'fc.weight': np.zeros((1008, 2048)),
    'fc.bias': np.zeros(1008),
  }
  out = convert_weights.inception_from_torch(state)
  shapes = inception.expected_weight_shapes()
  assert len(out) == 8
  for name, value in out.items():
    assert shapes[name] == value.shape, name


@pytest.fixture(scope='module')
def digits_net(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp('digits_cache'))
  params = dfeat.load_or_train_digits_features(cache)
  return cache, params


@pytest.fixture(scope='module')
def digits_test():
  return dfeat.load_digits_split('test')


def test_digits_network_learns_and_caches(digits_net, digits_test):
  cache, params = digits_net
  images, labels = digits_test
  features, probs = dfeat.digits_features(params, images)
  assert features.shape == (len(images), 64) and features.dtype == np.float32
  assert probs.shape == (len(images), 10)
  accuracy = np.mean(np.argmax(probs, 1) == labels)
  assert accuracy > 0.9, accuracy
  # Cached: same file name, same params, no retraining.
  assert os.path.exists(os.path.join(cache, dfeat.network_id() + '.npz'))
  again = dfeat.load_or_train_digits_features(cache)
  np.testing.assert_array_equal(again['logits']['kernel'], params['logits']['kernel'])
  # Videos: per-frame features averaged over frames.
  video = np.stack([images[:3], images[:3]], axis=1)  # [3, 2, 32, 32, 3]
  vf, vp = dfeat.digits_features(params, video)
  np.testing.assert_allclose(vf, features[:3], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(vp, probs[:3], rtol=1e-5, atol=1e-6)


def test_digits_fid_self_and_noise(digits_net, digits_test, tmp_path):
  cache, params = digits_net
  images, _ = digits_test
  mu, sigma = reference_stats.reference_statistics(
    'magvit_digits',
    lambda x: dfeat.digits_features(params, x)[0],
    DIGITS,
    'test',
    str(tmp_path),
    dfeat.network_id(),
  )
  features, _ = dfeat.digits_features(params, images)
  mu_s, sigma_s = frechet.feature_statistics(features)
  self_fid = frechet.frechet_distance(mu, sigma, mu_s, sigma_s)
  noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
  noise_fid = frechet.frechet_distance(
    mu, sigma, *frechet.feature_statistics(dfeat.digits_features(params, noise)[0])
  )
  assert self_fid < 1e-3, self_fid
  assert noise_fid > 1.0 and noise_fid > 1e4 * max(self_fid, 1e-8), (self_fid, noise_fid)


def test_reference_stats_cache(tmp_path):
  calls = []

  def feature_fn(x):
    calls.append(len(x))
    return x.reshape(len(x), 8, 4, 8, 4, 3).mean(axis=(2, 4, 5)).reshape(len(x), 64)

  before = reference_stats.compute_count
  args = ('magvit_digits', feature_fn, DIGITS, 'test', str(tmp_path))
  mu1, sigma1 = reference_stats.reference_statistics(*args, network_id='pix-a')
  assert sum(calls) == 300 and reference_stats.compute_count == before + 1
  mu2, sigma2 = reference_stats.reference_statistics(*args, network_id='pix-a')
  assert sum(calls) == 300 and reference_stats.compute_count == before + 1  # reused
  np.testing.assert_array_equal(mu1, mu2)
  np.testing.assert_array_equal(sigma1, sigma2)
  reference_stats.reference_statistics(*args, network_id='pix-b')  # other network
  assert sum(calls) == 600 and reference_stats.compute_count == before + 2
  # A changed dataset fingerprint (here: forged in the file) invalidates the cache too.
  path = reference_stats.cache_path(str(tmp_path), 'magvit_digits', 'test', 32, None, 'pix-a')
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  arrays['fingerprint'] = np.asarray('0.0.1:299')
  np.savez(path, **arrays)
  reference_stats.reference_statistics(*args, network_id='pix-a')
  assert sum(calls) == 900 and reference_stats.compute_count == before + 3
  assert reference_stats.dataset_fingerprint('magvit_digits', 'test') == '1.0.0:300'


def test_evaluate_cli_generates_and_logs(tmp_path, monkeypatch, digits_net, digits_test):
  """evaluate.main with a stand-in Sampler (real test digits of the asked classes)."""
  import json  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from magvit_jax import evaluate  # pylint: disable=g-import-not-at-top
  from magvit_jax.inference import sampler as sampling  # pylint: disable=g-import-not-at-top
  from magvit_jax.metrics_writer import read_metrics  # pylint: disable=g-import-not-at-top

  cache, _ = digits_net
  images, labels = digits_test
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '7').mkdir(parents=True)
  config = {
    'stage': 'transformer',
    'model': {'num_classes': 10},
    'data': {'name': 'magvit_digits', 'data_dir': None, 'image_size': 32, 'eval_split': 'test'},
  }
  (workdir / 'config.json').write_text(json.dumps(config))

  class FakeSampler:
    def __init__(self, wd, **unused_restore_kwargs):
      assert wd == str(workdir)

    def generate(self, asked, **unused_kwargs):
      seen = {}
      rows = []
      for c in asked:  # The next unused test digit of each asked class.
        seen[c] = seen.get(c, -1) + 1
        rows.append(int(np.flatnonzero(labels == c)[seen[c]]))
      return {'images': images[rows], 'labels': np.asarray(asked, np.int32)}

  monkeypatch.setattr(sampling, 'Sampler', FakeSampler)
  with flagsaver.flagsaver():
    flags.FLAGS(['evaluate', f'--workdir={workdir}', '--num_samples=100', f'--cache_dir={cache}'])
    evaluate.main(['evaluate'])
  metrics = read_metrics(str(workdir))[7]
  assert metrics['eval/classifier_accuracy'] > 0.9
  assert metrics['eval/num_samples'] == 100
  assert metrics['eval/digits_fid'] < 20.0  # real digits; ~8 from 100-sample bias alone
  assert 0.0 <= metrics['eval/precision'] <= 1.0 and 0.0 <= metrics['eval/recall'] <= 1.0
  assert metrics['eval/inception_score'] > 5.0
