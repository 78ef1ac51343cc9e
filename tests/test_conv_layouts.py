"""Conv layouts of the paper tokenizers (and their discriminators), checked for TPU.

Nothing is run: each config's tokenizer forward and discriminator forward are lowered with
abstract inputs (`jax.ShapeDtypeStruct`, batch 1, a small spatial size; conv widths do not
depend on it) and every `stablehlo.convolution` of the lowered program is checked:

  (a) channels-last layouts, `[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]` (2D) /
      `[b, 0, 1, 2, f]x[0, 1, 2, i, o]->[b, 0, 1, 2, f]` (3D), so no layout transposes are
      needed on TPU;
  (b) input and output feature widths that are multiples of 128 (the TPU lane width), except
      the expected ones below, named by parameter path (the conv's kernel operand is a
      parameter of the forward: its path in the param tree of `eval_shape(init)`) or, for the
      discriminator's parameter-free blur pools (depthwise convs), by the module that runs them.

Every conv kernel of a param tree must be the kernel of exactly one convolution of the
forward, so no conv escapes the check. A width the paper prescribes that is not a multiple of
128 is listed as an expected exception with the reason; the models are not changed for it.
docs/scaling.md ("Conv layouts") summarises the result.
"""

from __future__ import annotations

import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from magvit_jax.config_loader import load_config
from magvit_jax.models import tokenizers
from magvit_jax.trainers.adversarial import Adversarial

LANE = 128
LAYOUTS = {
  2: '[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]',
  3: '[b, 0, 1, 2, f]x[0, 1, 2, i, o]->[b, 0, 1, 2, f]',
}

# config, abstract input shape (batch 1; frames as the config's temporal factor allows).
CASES = {
  'vqgan_imagenet': ('vqgan_imagenet.py', (1, 32, 32, 3)),
  'vqgan_official512': ('vqgan_imagenet.py:official512', (1, 32, 32, 3)),
  'magvit_tokenizer_B': ('magvit_ucf101.py:tokenizer_B', (1, 4, 32, 32, 3)),
  'magvit_tokenizer_L': ('magvit_ucf101.py:tokenizer_L', (1, 4, 32, 32, 3)),
  'magvit2_video': ('magvit2_tokenizer_video.py', (1, 5, 32, 32, 3)),
}

# Widths that are not multiples of 128, by conv: name -> (input width, output width).
_RGB_2D = {
  # RGB in and out: 3 channels by definition.
  "tokenizer ['encoder']['conv_in']['kernel']": (3, 128),
  "tokenizer ['decoder']['conv_out']['kernel']": (128, 3),
}
# The StyleGAN discriminator of every config here has filters 64 (the default of
# config_schema.base_config, also MAGVIT's) before its first block widens it x2 (MAGVIT's
# multipliers (2, 4, 4, 4, 4)), so its input level is 64 wide: conv_in (RGB -> 64), block_0's
# two convs and two blur pools on the 64-wide input, and its shortcut from it. conv_final reads
# the minibatch-stddev channel on top of its 256 features (StyleGAN: 256 + 1).
_DISC = {
  "discriminator ['conv_in']['kernel']": (3, 64),
  "discriminator ['block_0']['conv_0']['kernel']": (64, 64),
  "discriminator ['block_0']['conv_1']['kernel']": (64, 128),
  "discriminator ['block_0']['shortcut']['kernel']": (64, 128),
  'discriminator block_0 blur_pool #0': (64, 64),
  'discriminator block_0 blur_pool #1': (64, 64),
  "discriminator ['conv_final']['kernel']": (257, 256),
}


def _magvit_b_level0() -> dict[str, tuple[int, int]]:
  """MAGVIT-B's 3D-VQ has filters 64 (the paper's B; L has 128): its first level is 64 wide."""
  out = {
    "tokenizer ['encoder']['conv_in']['kernel']": (3, 64),  # RGB -> 64
    "tokenizer ['decoder']['conv_out']['kernel']": (64, 3),  # 64 -> RGB
    # Level 1 of the encoder starts from 64 channels: its first conv and shortcut read 64.
    "tokenizer ['encoder']['down_1_res_0']['conv_0']['kernel']": (64, 128),
    "tokenizer ['encoder']['down_1_res_0']['shortcut']['kernel']": (64, 128),
    # The decoder's last level is 64 wide: its first block reads 128, the others 64.
    "tokenizer ['decoder']['up_0_res_0']['conv_0']['kernel']": (128, 64),
    "tokenizer ['decoder']['up_0_res_0']['shortcut']['kernel']": (128, 64),
  }
  # Level 0 of the encoder and the decoder's last level: 2 residual blocks of 64 (the encoder
  # downsamples by pooling, without a conv).
  for part, level in (('encoder', 'down_0'), ('decoder', 'up_0')):
    for b in range(2):
      for c in ('conv_0', 'conv_1'):
        key = f"tokenizer ['{part}']['{level}_res_{b}']['{c}']['kernel']"
        out.setdefault(key, (64, 64))
  return out


EXPECTED = {
  'vqgan_imagenet': {**_RGB_2D, **_DISC},
  'vqgan_official512': {**_RGB_2D, **_DISC},
  'magvit_tokenizer_B': {**_magvit_b_level0(), **_DISC},
  'magvit_tokenizer_L': {
    "tokenizer ['encoder']['conv_in']['kernel']": (3, 128),
    "tokenizer ['decoder']['conv_out']['kernel']": (128, 3),
    **_DISC,
  },
  'magvit2_video': {
    "tokenizer ['encoder']['conv_in']['conv']['kernel']": (3, 128),
    "tokenizer ['decoder']['conv_out']['conv']['kernel']": (128, 3),
    # LFQ: the encoder projects to num_bits = 18 channels (one per code bit, 2^18 codes) and
    # the decoder reads them back; the paper's code width.
    "tokenizer ['encoder']['conv_out']['conv']['kernel']": (512, 18),
    "tokenizer ['decoder']['conv_in']['conv']['kernel']": (18, 512),
    **_DISC,
  },
}

_CONV = re.compile(
  r'stablehlo\.convolution\((%[\w#]+), (%[\w#]+)\) dim_numbers = (\[[^\]]*\]x\[[^\]]*\]->\[[^\]]*\])'
  r'.*?feature_group_count = (\d+).*?: \(tensor<([\dx]+)x\w+>, tensor<([\dx]+)x\w+>\) -> '
  r'tensor<([\dx]+)x\w+> loc\((#loc\d+)\)'
)
_LOC = re.compile(r'^(#loc\d+) = loc\("([^"]*)"', re.M)


def _shape(s: str) -> tuple[int, ...]:
  return tuple(int(d) for d in s.split('x'))


def convolutions(module: nn.Module, x: jax.ShapeDtypeStruct, prefix: str) -> list[dict]:
  """Every convolution of `module.apply(params, x)`, lowered on abstract params and input.

  Returns one dict per `stablehlo.convolution`: `name` ("<prefix> <param path of its kernel>",
  or "<prefix> <module scope> blur_pool #k" for a parameter-free depthwise conv), `layout` (its
  dim_numbers), `rank` (spatial rank), `groups` (feature_group_count), `width_in` /
  `width_out` (input and output feature widths: the last axis, i.e. meaningful for the
  channels-last layouts that (a) requires). Raises if a conv kernel of the param tree is
  not the kernel operand of exactly one convolution, or a conv's kernel is neither a parameter
  nor a depthwise blur (e.g. a kernel cast to another dtype: only float32 models are named).
  """
  params = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), x)['params'])
  leaves = jax.tree_util.tree_leaves_with_path(({'params': params}, x))
  arg_names = {f'%arg{i}': jax.tree_util.keystr(p[2:]) for i, (p, _) in enumerate(leaves)}
  kernels = {
    jax.tree_util.keystr(p): leaf.shape
    for p, leaf in jax.tree_util.tree_leaves_with_path(params)
    if p[-1].key == 'kernel' and leaf.ndim >= 4
  }
  text = jax.jit(module.apply).lower({'params': params}, x).as_text(debug_info=True)
  scopes = dict(_LOC.findall(text))
  found, used, blur = [], collections.Counter(), collections.Counter()
  for lhs_arg, rhs_arg, layout, groups, lhs, rhs, out, loc in _CONV.findall(text):
    del lhs_arg
    lhs, rhs, out = _shape(lhs), _shape(rhs), _shape(out)
    if rhs_arg in arg_names:
      path = arg_names[rhs_arg]
      assert kernels.get(path) == rhs, f'{prefix}: conv kernel {rhs_arg} is {path}, shape {rhs}'
      used[path] += 1
      name = f'{prefix} {path}'
    else:  # A kernel computed in the forward: the discriminator's depthwise blur.
      assert int(groups) == lhs[-1] and rhs[-2] == 1, f'{prefix}: conv with computed kernel {rhs}'
      scope = '/'.join(scopes.get(loc, '?').split('/')[2:-1]) or '(top)'
      name = f'{prefix} {scope} blur_pool #{blur[scope]}'
      blur[scope] += 1
    found.append(
      dict(
        name=name,
        layout=layout,
        rank=len(lhs) - 2,
        groups=int(groups),
        width_in=lhs[-1],
        width_out=out[-1],
      )
    )
  assert text.count('stablehlo.convolution(') == len(found), f'{prefix}: unparsed convolutions'
  missing = {k: n for k, n in used.items() if n != 1} | {k: 0 for k in kernels if k not in used}
  assert not missing, f'{prefix}: conv kernels not used by exactly one convolution: {missing}'
  return found


def _case_convolutions(case: str) -> list[dict]:
  spec, shape = CASES[case]
  config = load_config(spec)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  found = convolutions(tokenizers.build_tokenizer(config.model), x, 'tokenizer')
  adv = Adversarial(config, shape[1:], load_perceptual=False)
  if adv.disc is not None:
    found += convolutions(adv.disc, x, 'discriminator')
  return found


@pytest.mark.parametrize('case', list(CASES))
def test_paper_tokenizer_convs_are_channels_last_and_lane_aligned(case):
  convs = _case_convolutions(case)
  rank = len(CASES[case][1]) - 2
  assert len(convs) > 20, f'{case}: only {len(convs)} convolutions found'
  bad_layout = {c['name']: c['layout'] for c in convs if c['layout'] != LAYOUTS[c['rank']]}
  assert not bad_layout, f'{case}: convolutions not channels-last: {bad_layout}'
  assert {c['rank'] for c in convs} == {rank}
  unaligned = {
    c['name']: (c['width_in'], c['width_out'])
    for c in convs
    if c['width_in'] % LANE or c['width_out'] % LANE
  }
  unexpected = {k: v for k, v in unaligned.items() if EXPECTED[case].get(k) != v}
  assert not unexpected, (
    f'{case}: conv widths (in, out) not multiples of {LANE} and not expected: {unexpected}'
  )
  absent = sorted(set(EXPECTED[case]) - set(unaligned))
  assert not absent, f'{case}: expected unaligned convs not found (update EXPECTED): {absent}'
  # Everything else is aligned: the bulk of the network.
  aligned = len(convs) - len(unaligned)
  assert aligned > 2 * len(unaligned), f'{case}: {aligned} aligned, {len(unaligned)} not'


def test_check_names_a_misaligned_conv():
  """The parser sees a width that is not a multiple of 128, and names its parameter."""
  module = nn.Sequential([nn.Conv(128, (3, 3)), nn.Conv(96, (1, 1)), nn.Conv(256, (3, 3))])
  convs = convolutions(module, jax.ShapeDtypeStruct((1, 8, 8, 128), jnp.float32), 'm')
  assert [c['layout'] for c in convs] == [LAYOUTS[2]] * 3
  unaligned = {
    c['name']: (c['width_in'], c['width_out'])
    for c in convs
    if c['width_in'] % LANE or c['width_out'] % LANE
  }
  assert unaligned == {
    "m ['layers_1']['kernel']": (128, 96),
    "m ['layers_2']['kernel']": (96, 256),
  }


def test_check_sees_a_channels_first_conv():
  """A conv written NCHW shows up with its transposed dim_numbers, failing (a)."""

  class ChannelsFirst(nn.Module):
    @nn.compact
    def __call__(self, x):
      k = self.param('kernel', nn.initializers.lecun_normal(), (128, 128, 3, 3))
      return jax.lax.conv_general_dilated(
        x, k, (1, 1), 'SAME', dimension_numbers=('NCHW', 'OIHW', 'NCHW')
      )

  (conv,) = convolutions(ChannelsFirst(), jax.ShapeDtypeStruct((1, 128, 8, 8), jnp.float32), 'm')
  assert conv['name'] == "m ['kernel']"
  assert conv['layout'] == '[b, f, 0, 1]x[o, i, 0, 1]->[b, f, 0, 1]' != LAYOUTS[2]


def test_cpu_compiled_2d_conv_stack_has_no_transposes():
  """(c) XLA:CPU compiles a channels-last 2D conv stack without layout transposes."""
  module = nn.Sequential([nn.Conv(128, (3, 3)), nn.swish, nn.Conv(256, (3, 3), strides=2)])
  x = jnp.zeros((1, 16, 16, 128), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  hlo = jax.jit(module.apply).lower(params, x).compile().as_text()
  assert hlo.count('convolution(') == 2
  assert 'transpose(' not in hlo
  assert jax.eval_shape(module.apply, params, x).shape == (1, 8, 8, 256)
