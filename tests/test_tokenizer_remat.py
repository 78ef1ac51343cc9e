"""`model.remat_policy` of the tokenizers: each residual block in `nn.remat`, same function.

Rematerialisation only changes what the backward pass keeps in memory, so for every tokenizer
(2D VQGAN in both residual-block layouts, 3D-VQ, MAGVIT-v2 causal CNN in both decoder
conditionings) the parameter tree, the outputs and the gradients with a policy must equal
those without one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_configs  # tests/tiny_configs.py
from magvit_jax.config_loader import load_config
from magvit_jax.config_schema import validate_config
from magvit_jax.models import layers, tokenizers
from magvit_jax.models.causal_cnn import CausalResBlock
from magvit_jax.models.vqgan3d import ResBlock3D

VQ = dict(tiny_configs.TINY_VQ, name='vqgan', filters=16, num_groups=8)
MAGVIT2 = dict(tiny_configs.TINY_MAGVIT2, name='magvit2', filters=16, num_bits=4, num_groups=8)
CASES = {
  'vqgan': (VQ, (2, 8, 8, 3)),
  'vqgan_official_blocks': (
    dict(VQ, shortcut='output', res_conv_bias=False, encoder_in_bias=False, pixel_range='unit'),
    (2, 8, 8, 3),
  ),
  'vqgan3d': (dict(VQ, name='vqgan3d', temporal_downsample=(True,)), (1, 4, 8, 8, 3)),
  'magvit2': (MAGVIT2, (1, 5, 8, 8, 3)),
  'magvit2_level_start': (
    dict(
      MAGVIT2,
      temporal_downsample=(False,),
      temporal_kernel_size=1,
      adaptive_norm='level_start',
      res_conv_bias=False,
    ),
    (1, 1, 8, 8, 3),
  ),
}


def _build(config: dict, policy: str | None):
  c = dict(config)
  if policy is not None:
    c['remat_policy'] = policy
  return tokenizers.build_tokenizer(c)


def _loss_fn(model, x, weights):
  def loss(params):
    recon, aux = model.apply({'params': params}, x)
    return jnp.sum(recon * weights) + aux['loss']

  return jax.jit(jax.value_and_grad(loss))


# The 2D VQGAN cases run by default; the video tokenizers and a second policy compile larger
# graphs (10-30 s each on 2 cores) and are marked slow.
RUNS = [
  ('vqgan', 'full'),
  ('vqgan_official_blocks', 'full'),
  pytest.param('vqgan', 'dots_saveable', marks=pytest.mark.slow),
  pytest.param('vqgan3d', 'full', marks=pytest.mark.slow),
  pytest.param('magvit2', 'full', marks=pytest.mark.slow),
  pytest.param('magvit2_level_start', 'full', marks=pytest.mark.slow),
]


@pytest.mark.parametrize('case,policy', RUNS)
def test_remat_keeps_params_outputs_and_gradients(case, policy):
  config, shape = CASES[case]
  x = jax.random.uniform(jax.random.PRNGKey(1), shape, minval=-1.0, maxval=1.0)
  plain, default = _build(config, 'none'), _build(config, None)
  assert plain == default  # 'none' is the default: today's model.
  params = nn.unbox(jax.jit(plain.init)(jax.random.PRNGKey(0), x)['params'])
  out_shape = jax.eval_shape(plain.apply, {'params': params}, x)[0].shape
  weights = jax.random.normal(jax.random.PRNGKey(2), out_shape)
  loss0, grads0 = _loss_fn(plain, x, weights)(params)
  assert float(jnp.max(jnp.abs(jax.tree.leaves(grads0)[0]))) > 0.0  # a real gradient
  model = _build(config, policy)
  remat_params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x)['params'])
  # Same tree (names, shapes) and, from the same key, the same initial values.
  assert jax.tree.structure(remat_params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(remat_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  loss, grads = _loss_fn(model, x, weights)(params)
  np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-5)
  # Within 1e-5 of each gradient leaf's scale (the recomputation may reassociate sums).
  for (path, g), g0 in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads0)):
    scale = max(float(jnp.max(jnp.abs(g0))), 1e-3)
    err = float(jnp.max(jnp.abs(g - g0)))
    assert err <= 1e-5 * scale, f'{policy} {jax.tree_util.keystr(path)}: {err:.3g} vs {scale:.3g}'


def test_remat_wraps_only_with_a_policy():
  assert layers.remat(ResBlock3D, 'none') is ResBlock3D
  wrapped = layers.remat(CausalResBlock, 'full', static_argnums=(3,))
  assert wrapped is not CausalResBlock and issubclass(wrapped, nn.Module)
  with pytest.raises(ValueError, match='remat_policy must be one of'):
    layers.remat(ResBlock3D, 'everything')


def test_remat_policy_is_a_validated_tokenizer_key():
  config = load_config('vqgan_imagenet.py:digits')
  assert config.model.remat_policy == 'none'
  config.model.remat_policy = 'full'
  validate_config(config, 'tokenizer')
  config.model.remat_policy = 'sometimes'
  with pytest.raises(ValueError, match='model.remat_policy'):
    validate_config(config, 'tokenizer')
