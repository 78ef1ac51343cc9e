"""COMMIT (magvit_jax/masking/commit.py): task conditions, input composition, loss weights,
task tokens, decoding with condition tokens and the multi-task train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from magvit_jax.decoding import maskgit
from magvit_jax.masking import commit
from magvit_jax.models.transformer import Transformer

T, H, W = 4, 8, 8
SETTINGS = commit.TaskSettings(fp_frames=1, fi_frames=1, box_fraction=0.5)


def known_of(task, rng=0, settings=SETTINGS, t=T):
  ids = jnp.asarray(commit.task_ids([task]), jnp.int32)
  return np.asarray(commit.known_pixels(ids, jax.random.PRNGKey(rng), t, H, W, settings))[0]


def frames(*known_frames, t=T):
  out = np.zeros((t, H, W), bool)
  out[list(known_frames)] = True
  return out


def box(y0, y1, x0, x1, t=T):
  out = np.zeros((t, H, W), bool)
  out[:, y0:y1, x0:x1] = True
  return out


@pytest.mark.parametrize(
  'task,expected',
  [
    ('FP', frames(0)),
    ('CFP', frames(0)),
    ('FI', frames(0, T - 1)),
    ('OPC', box(2, 6, 2, 6)),  # the central H/2 x W/2 box is given
    ('OPV', box(2, 6, 0, W)),  # the middle rows are given; extend up and down
    ('OPH', box(0, H, 2, 6)),  # the middle columns are given; extend left and right
    ('IPC', ~box(2, 6, 2, 6)),  # everything but the central box is given
    ('CG', np.zeros((T, H, W), bool)),
  ],
)
def test_static_task_regions(task, expected):
  np.testing.assert_array_equal(known_of(task), expected)


def test_condition_sizes_follow_settings():
  s = commit.TaskSettings(fp_frames=2, fi_frames=2, box_fraction=0.25)
  np.testing.assert_array_equal(known_of('FP', settings=s, t=8), frames(0, 1, t=8))
  np.testing.assert_array_equal(known_of('FI', settings=s, t=8), frames(0, 1, 6, 7, t=8))
  np.testing.assert_array_equal(known_of('OPC', settings=s, t=8), box(3, 5, 3, 5, t=8))


@pytest.mark.parametrize('task', ['OPD', 'IPD'])
def test_dynamic_box_moves_linearly_and_keeps_its_size(task):
  moved = False
  for rng in range(6):
    k = known_of(task, rng, t=8)
    inside = k if task == 'OPD' else ~k
    corners = []
    for t in range(8):
      ys, xs = np.nonzero(inside[t])
      assert inside[t].sum() == 16  # 4 x 4 box every frame, fully inside the frame
      assert ys.max() - ys.min() == 3 and xs.max() - xs.min() == 3
      corners.append((ys.min(), xs.min()))
    corners = np.asarray(corners, float)
    # Linear from the first to the last corner (rounded to pixels).
    line = corners[0] + (corners[-1] - corners[0]) * np.arange(8)[:, None] / 7
    assert np.abs(corners - line).max() <= 0.5 + 1e-6
    moved |= bool((corners[0] != corners[-1]).any())
  assert moved


def test_bad_settings_name_the_field():
  ids = jnp.zeros((1,), jnp.int32)
  with pytest.raises(ValueError, match='commit.fp_frames'):
    commit.known_pixels(ids, jax.random.PRNGKey(0), 4, 8, 8, commit.TaskSettings(fp_frames=4))
  with pytest.raises(ValueError, match='commit.fi_frames'):
    commit.known_pixels(ids, jax.random.PRNGKey(0), 4, 8, 8, commit.TaskSettings(fi_frames=2))
  with pytest.raises(ValueError, match='unknown COMMIT task'):
    commit.task_ids(['FP', 'XX'])


def test_pad_condition():
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.uniform(-1, 1, (3, 5, H, W, 3)), jnp.float32)
  known = np.stack([frames(0, 1, t=5), frames(0, 4, t=5), box(2, 6, 2, 6, t=5)])
  padded = np.asarray(commit.pad_condition(video, jnp.asarray(known)))
  v = np.asarray(video)
  # FP: unknown frames repeat the last condition frame.
  for t in range(2, 5):
    np.testing.assert_array_equal(padded[0, t], v[0, 1])
  np.testing.assert_array_equal(padded[0, :2], v[0, :2])
  # FI: the nearest known frame (ties -> the earlier one).
  for t, src in [(1, 0), (2, 0), (3, 4)]:
    np.testing.assert_array_equal(padded[1, t], v[1, src])
  # Spatial: known pixels kept, the rest mid-grey (0).
  np.testing.assert_array_equal(padded[2][known[2]], v[2][known[2]])
  assert np.all(padded[2][~known[2]] == 0.0)


def test_condition_region_pools_supervoxels():
  known = np.zeros((1, 4, 8, 8), bool)
  known[0, 0, 0, 0] = True  # one pixel of supervoxel (t0, 0, 0)
  known[0, 3, 7, 7] = True  # one pixel of supervoxel (t1, 3, 3)
  region = np.asarray(commit.condition_region(jnp.asarray(known), (2, 4, 4)))
  expected = np.zeros((2, 4, 4), bool)
  expected[0, 0, 0] = expected[1, 3, 3] = True
  np.testing.assert_array_equal(region.reshape(2, 4, 4), expected)
  # Causal (MAGVIT-v2): 5 frames -> latent frames {0}, {1, 2}, {3, 4}.
  known = np.zeros((1, 5, 8, 8), bool)
  known[0, 2, 0, 0] = True
  region = np.asarray(commit.condition_region(jnp.asarray(known), (3, 4, 4), causal=True))
  expected = np.zeros((3, 4, 4), bool)
  expected[1, 0, 0] = True
  np.testing.assert_array_equal(region.reshape(3, 4, 4), expected)


def test_three_way_input_composition():
  m = 99
  tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]])
  cond = jnp.asarray([[11, 12, 13, 14, 15, 16]])
  region = jnp.asarray([[True, True, False, False, True, False]])
  mask = jnp.asarray([[True, False, True, False, True, True]])
  out = commit.compose_inputs(tokens, cond, region, mask, m)
  # masked & region -> condition token; masked & ~region -> [MASK]; unmasked -> original.
  np.testing.assert_array_equal(out, [[11, 2, m, 4, 15, m]])


@pytest.mark.slow  # over 4 s on 2 cores; the full suite runs it
def test_loss_weights_reach_the_right_positions():
  rng = np.random.default_rng(1)
  b, n, k = 2, 6, 7
  logits = jnp.asarray(rng.normal(size=(b, n, k)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, k, (b, n)))
  mask = jnp.asarray([[1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0]], bool)
  region = jnp.asarray([[1, 0, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0]], bool)
  kinds = {'mask': mask & ~region, 'refine': mask & region, 'recon': ~mask}
  ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, tokens))
  for name, sel in kinds.items():
    w = {f'{k_}_weight': float(k_ == name) for k_ in kinds}
    grad = jax.grad(lambda l: commit.commit_loss(l, tokens, mask, region, **w)[0])(logits)
    touched = np.abs(np.asarray(grad)).sum(-1) > 0
    np.testing.assert_array_equal(touched, np.asarray(sel))
    loss, metrics = commit.commit_loss(logits, tokens, mask, region, **w)
    np.testing.assert_allclose(loss, ce[np.asarray(sel)].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics[f'{name}_ce'], ce[np.asarray(sel)].mean(), rtol=1e-5)
  # Weighted mean over all tokens: weights 1, 2, 0.5.
  loss, _ = commit.commit_loss(
    logits, tokens, mask, region, mask_weight=1.0, refine_weight=2.0, recon_weight=0.5
  )
  w = np.asarray(
    commit.loss_weights(mask, region, mask_weight=1.0, refine_weight=2.0, recon_weight=0.5)
  )
  np.testing.assert_allclose(loss, (w * ce).sum() / w.sum(), rtol=1e-5)


def test_factorised_commit_loss_sums_sub_tokens():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(1, 3, 2, 4)), jnp.float32)  # K = 16 = 4^2
  tokens = jnp.asarray([[5, 10, 15]])
  mask = jnp.ones((1, 3), bool)
  region = jnp.zeros((1, 3), bool)
  loss, _ = commit.commit_loss(logits, tokens, mask, region)
  subs = np.stack([np.asarray(tokens) % 4, np.asarray(tokens) // 4], -1)
  lp = np.asarray(jax.nn.log_softmax(logits, -1))
  nll = -np.take_along_axis(lp, subs[..., None], -1)[..., 0].sum(-1)
  np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)


@pytest.mark.slow  # over 8 s on 2 cores; the full suite runs it
def test_task_token_changes_the_output_and_is_required():
  model = Transformer(
    codebook_size=16,
    num_classes=3,
    seq_len=8,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    mlp_dim=64,
    dropout_rate=0.0,
    num_tasks=len(commit.TASKS),
  )
  tokens = jnp.zeros((2, 8), jnp.int32)
  labels = jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens, labels, jnp.zeros((2,), jnp.int32))
  out = model.apply(params, tokens, labels, jnp.asarray([0, 1]))
  assert out.shape == (2, 8, 16)
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-4
  assert params['params']['position_embedding'].value.shape == (8 + 2, 32)
  with pytest.raises(ValueError, match='num_tasks=10'):
    model.apply(params, tokens, labels)


def test_decoding_reinjects_condition_tokens():
  """A model that predicts the token it sees (and 0 for [MASK]) returns the condition tokens
  inside the condition region: they were its input at every step."""
  k, n = 8, 12
  mask_id = k

  def apply_fn(params, tokens, labels, tasks):
    del params, labels
    seen = jax.nn.one_hot(jnp.where(tokens == mask_id, 0, tokens), k)
    return 20.0 * seen + 0.0 * tasks[:, None, None]

  rng = np.random.default_rng(3)
  cond_tokens = rng.integers(1, k, (2, n))
  region = rng.random((2, n)) < 0.5
  condition = commit.decoding_condition(jnp.asarray(cond_tokens), jnp.asarray(region), mask_id)
  init = jnp.full((2, n), mask_id, jnp.int32)
  out = maskgit.decode(
    apply_fn,
    {},
    jax.random.PRNGKey(0),
    init,
    jnp.zeros((2,), jnp.int32),
    mask_token_id=mask_id,
    num_steps=4,
    tasks=jnp.asarray([0, 1]),
    condition_tokens=condition,
    choice_temperature=0.0,
    temperature=0.0,
  )
  expected = np.where(region, cond_tokens, 0)
  np.testing.assert_array_equal(out.tokens, expected)
  # Known (non-mask) init tokens are still never changed.
  init2 = init.at[:, 0].set(3)
  out2 = maskgit.decode(
    apply_fn,
    {},
    jax.random.PRNGKey(0),
    init2,
    jnp.zeros((2,), jnp.int32),
    mask_token_id=mask_id,
    num_steps=4,
    tasks=jnp.asarray([0, 1]),
    condition_tokens=condition,
    choice_temperature=0.0,
    temperature=0.0,
  )
  np.testing.assert_array_equal(np.asarray(out2.tokens)[:, 0], [3, 3])
