"""A damaged newest checkpoint costs one checkpoint interval, not the run.

Checkpoints of steps 2, 4 and 6 are written; the data files of step 6 are truncated (what a
full disk or a killed copy leaves). Sampling-side loading and training resume both say which
step is damaged and why and fall back to step 4; `strict` refuses; an explicit step is used as
asked; the damaged checkpoint is set aside (kept on disk) so the resumed run can save step 6
again and keep-last-N never rotates a good checkpoint out in its favour.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import pytest

from magvit_jax import checkpoint as ckpt_lib
from magvit_jax import parallel
from magvit_jax import pretrained
from magvit_jax.config_schema import base_config
from magvit_jax.models import tokenizers
from magvit_jax.trainers import train_state as ts


def _config():
  c = base_config('tokenizer', 'vqgan')
  c.model.update(
    dict(filters=8, channel_multipliers=(1, 2), num_res_blocks=1, embedding_dim=4, num_groups=4)
  )
  c.model.codebook_size = 16
  c.data.image_size = 8
  return c


@pytest.fixture()
def run(tmp_path):
  """A tokenizer workdir with checkpoints 2, 4, 6 (step k: params filled with k) and the pieces
  to restore its train state."""
  config = _config()
  module = tokenizers.build_tokenizer(config.model)
  tx = ts.make_optimizer(config.optimizer)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  init_params = tokenizers.init_params(module, config)
  init_fn, shardings, _ = ts.state_layout(init_params, tx, mesh, config.logical_axis_rules)
  state = jax.jit(init_fn, out_shardings=shardings)(jax.random.PRNGKey(0))
  workdir = tmp_path / 'tok'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps(config.to_dict()))
  checkpointer = ckpt_lib.Checkpointer(str(workdir / 'checkpoints'), config.to_dict(), 5)
  for step in (2, 4, 6):
    params = jax.tree_util.tree_map(lambda p, v=step: jnp.full_like(p, v), state.params)
    checkpointer.save(step, state.replace(step=jnp.int32(step), params=params))
  checkpointer.close()
  # Truncate every array data file of step 6.
  for path in (workdir / 'checkpoints' / '6' / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(path.read_bytes()[:10])
  return dict(workdir=workdir, config=config, tx=tx, mesh=mesh, init_params=init_params)


def _value(params) -> float:
  return float(jax.tree_util.tree_leaves(params)[0].ravel()[0])


def test_loading_falls_back_to_the_newest_readable_checkpoint(run, capsys):
  loaded = pretrained.load_tokenizer(str(run['workdir']))
  assert loaded.step == 4 and _value(loaded.params) == 4.0
  out = capsys.readouterr().out
  assert f'checkpoint {run["workdir"]}/checkpoints/6 is damaged and cannot be read' in out
  assert 'falling back to the next older checkpoint' in out


def test_strict_refuses_and_an_explicit_step_is_used(run):
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match=r'/6 is damaged.*steps \[2, 4\]'):
    pretrained.load_tokenizer(str(run['workdir']), strict=True)
  loaded = pretrained.load_tokenizer(str(run['workdir']), step=2)
  assert loaded.step == 2 and _value(loaded.params) == 2.0
  with pytest.raises(FileNotFoundError, match='no checkpoint of step 3'):
    pretrained.load_tokenizer(str(run['workdir']), step=3)


def test_training_resumes_from_the_newest_readable_and_sets_the_damaged_one_aside(run, capsys):
  directory = str(run['workdir'] / 'checkpoints')
  checkpointer = ckpt_lib.Checkpointer(directory, run['config'].to_dict(), 5)
  state, _, start = ts.init_or_restore(
    run['init_params'], run['tx'], run['config'], run['mesh'], checkpointer, 'tokenizer'
  )
  assert start == 4 and int(state.step) == 4 and _value(state.params) == 4.0
  assert checkpointer.all_steps() == [2, 4]
  aside = pathlib.Path(directory + '_set_aside') / 'damaged-6'
  assert aside.is_dir() and 'moved step 6 (damaged)' in capsys.readouterr().out
  checkpointer.save(6, state.replace(step=jnp.int32(6)))  # Step 6 is written anew.
  assert checkpointer.all_steps() == [2, 4, 6]
  checkpointer.close()
  with pytest.raises(ckpt_lib.DamagedCheckpointError):
    checkpointer = ckpt_lib.Checkpointer(directory, run['config'].to_dict(), 5)
    try:
      # The rewritten step 6 reads; damage it again and refuse strictly.
      for path in (pathlib.Path(directory) / '6' / 'state').rglob('*'):
        if path.is_file() and path.parent.name == 'd':
          path.write_bytes(b'')
      ts.init_or_restore(
        run['init_params'],
        run['tx'],
        run['config'],
        run['mesh'],
        checkpointer,
        'tokenizer',
        strict_restore=True,
      )
    finally:
      checkpointer.close()


def test_an_explicit_older_step_sets_newer_ones_aside(run):
  directory = str(run['workdir'] / 'checkpoints')
  checkpointer = ckpt_lib.Checkpointer(directory, run['config'].to_dict(), 5)
  _, _, start = ts.init_or_restore(
    run['init_params'],
    run['tx'],
    run['config'],
    run['mesh'],
    checkpointer,
    'tokenizer',
    restore_step=2,
  )
  assert start == 2 and checkpointer.all_steps() == [2]
  assert sorted(os.listdir(directory + '_set_aside')) == ['superseded-4', 'superseded-6']
  checkpointer.close()
