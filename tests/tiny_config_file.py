"""A config *file* for the subprocess tests (multi-host, preemption): a tiny version of
configs/vqgan_imagenet.py:digits on a data=2 x fsdp=4 mesh, loadable by path like a user's
config."""

import pathlib
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

_TEMPLATE = textwrap.dedent("""\
    import importlib.util

    def get_config(arg=None):
      spec = importlib.util.spec_from_file_location('base', {base!r})
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      c = module.get_config('digits')
      c.data.image_size = 16
      c.model.update(dict(filters=16, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                          embedding_dim=8, codebook_size=32, num_groups=4))
      c.batch_size = 16
      c.eval_batch_size = 100
      c.num_train_steps = {steps}
      c.log_every = 1
      c.checkpoint_every = {checkpoint_every}
      c.optimizer.update(dict(warmup_steps=2, decay_steps={steps}))
      c.mesh.data = 2
      c.mesh.fsdp = 4
      return c
    """)


def write_tiny_tokenizer_config(
  path: pathlib.Path, steps: int, checkpoint_every: int
) -> pathlib.Path:
  """Writes the tiny tokenizer config file to `path` and returns it."""
  path.write_text(
    _TEMPLATE.format(
      base=str(REPO / 'configs' / 'vqgan_imagenet.py'),
      steps=steps,
      checkpoint_every=checkpoint_every,
    )
  )
  return path
