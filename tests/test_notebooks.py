"""The notebooks in notebooks/: each runs top to bottom with tiny settings (MAGVIT_NOTEBOOK_FAST=1)
in a fresh kernel of this interpreter, and what it computed is checked; every committed notebook
carries no outputs."""

import json
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
import pytest

# Trains or runs subprocesses: the full suite (CI) runs it, the fast lane (-m 'not slow') skips it.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / 'notebooks'
KERNEL = 'magvit-notebook-test'
CELL_TIMEOUT_S = 600
PROBE_MARK = 'NOTEBOOK_PROBE '


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """Environment of the notebook kernel (it inherits os.environ): a kernelspec for this
  interpreter, one CPU device, the notebooks' tiny settings, runs under tmp_path."""
  spec_dir = tmp_path / 'jupyter' / 'kernels' / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(
    json.dumps(
      {
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'magvit_jax test',
        'language': 'python',
      }
    )
  )
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  monkeypatch.setenv('JUPYTER_PLATFORM_DIRS', '1')
  monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))
  monkeypatch.setenv('XLA_FLAGS', '')  # not the 8 fake devices of conftest.py
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.delenv('MPLBACKEND', raising=False)  # the kernel's inline backend
  monkeypatch.setenv('MAGVIT_NOTEBOOK_FAST', '1')
  monkeypatch.setenv('MAGVIT_NOTEBOOK_WORKDIR', str(tmp_path / 'runs'))
  for name in (
    'MAGVIT_NOTEBOOK_STEPS',
    'MAGVIT_TOKENIZER_WORKDIR',
    'MAGVIT_VIDEO_TOKENIZER_WORKDIR',
    'MAGVIT_TRANSFORMER_WORKDIR',
    'MAGVIT_VQGAN2D_WORKDIR',
    'MAGVIT_TOKENIZER3D_WORKDIR',
    'MAGVIT_COMMIT_WORKDIR',
  ):
    monkeypatch.delenv(name, raising=False)
  return tmp_path


def run_notebook(name: str, cwd: pathlib.Path, probe: str):
  """Executes notebooks/<name> in cwd, then `probe` (code whose value is a JSON-able dict) in
  the same kernel; returns (executed notebook, the probe's dict, seconds)."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nb.cells.append(
    nbformat.v4.new_code_cell(f'import json as _json\nprint({PROBE_MARK!r} + _json.dumps({probe}))')
  )
  t0 = time.perf_counter()
  NotebookClient(
    nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, resources={'metadata': {'path': str(cwd)}}
  ).execute()
  seconds = time.perf_counter() - t0
  print(f'{name}: executed in {seconds:.1f} s')
  text = ''.join(o.get('text', '') for o in nb.cells[-1].outputs if o.output_type == 'stream')
  line = next(l for l in text.splitlines() if l.startswith(PROBE_MARK))
  return nb, json.loads(line[len(PROBE_MARK) :]), seconds


def displayed(nb, mime: str) -> int:
  return sum(
    mime in o.get('data', {}) for c in nb.cells if c.cell_type == 'code' for o in c.outputs
  )


def test_tokenizer_notebook_runs(kernel_env):
  nb, got, _ = run_notebook(
    'tokenizer.ipynb',
    kernel_env,
    """{
      'vq_psnr': vq_psnr, 'vq_usage': vq_usage, 'vq_vocab': vq_vocab,
      'vq_recon': [list(vq_recon.shape), str(vq_recon.dtype)], 'vq_tokens': list(vq_tokens.shape),
      'v2_psnr': v2_psnr, 'v2_usage': v2_usage, 'v2_vocab': v2_vocab,
      'v2_recon': [list(v2_recon.shape), str(v2_recon.dtype)], 'v2_tokens': list(v2_tokens.shape),
      'v2_image_psnr': v2_image_psnr, 'image_tokens': list(image_tokens.shape),
      'gif': os.path.getsize(gif_path), 'vq_dir': vq_dir}""",
  )
  # VQGAN: the whole 300-digit test split, 32x32 -> 8x8 tokens, learned something in 30 steps
  # (an untrained tokenizer scores ~8 dB, 30 steps ~18 dB).
  assert got['vq_recon'] == [[300, 32, 32, 3], 'uint8']
  assert got['vq_tokens'] == [300, 8, 8]
  assert got['vq_psnr'] > 12.0
  assert got['vq_vocab'] == 64 and 0.0 < got['vq_usage'] <= 1.0
  assert got['vq_dir'] == str(kernel_env / 'runs' / 'vqgan')
  # MAGVIT-v2 (tiny: 16x16): 5-frame clips -> 2 token frames; an image -> 1 token frame.
  assert got['v2_recon'] == [[100, 5, 16, 16, 3], 'uint8']
  assert got['v2_tokens'] == [100, 2, 4, 4]
  assert got['image_tokens'] == [100, 1, 4, 4]
  assert got['v2_psnr'] > 8.0 and got['v2_image_psnr'] > 5.0
  assert got['v2_vocab'] == 256 and 0.0 < got['v2_usage'] <= 1.0
  assert got['gif'] > 0
  assert displayed(nb, 'image/png') >= 6  # grids, token maps, usage plots
  assert displayed(nb, 'image/gif') == 1


def test_maskgit_notebook_runs(kernel_env):
  nb, got, _ = run_notebook(
    'maskgit.ipynb',
    kernel_env,
    """{
      'images': [list(generated['images'].shape), str(generated['images'].dtype)],
      'labels': generated['labels'].tolist(), 'history': list(generated['history'].shape),
      'masked_per_step': masked_per_step.tolist(), 'follows': bool(follows),
      'schedules': sorted(schedule_counts), 'cosine': schedule_counts['cosine'],
      'kept': bool(kept_in and kept_out),
      'inpainted': list(inpainted['images'].shape), 'outpainted': list(outpainted['images'].shape),
      'retargeted': list(retargeted['images'].shape),
      'inpainted_tokens': inpainted['tokens'].tolist(),
      'original_tokens': inpainted['original_tokens'].tolist()}""",
  )
  assert got['images'] == [[10, 32, 32, 3], 'uint8']
  assert got['labels'] == list(range(10))
  assert got['history'] == [8, 10, 64]  # T = 8 steps of 8x8 tokens
  # The decode fixed tokens on the cosine schedule and ended with none masked.
  assert got['follows'] and got['masked_per_step'] == got['cosine'][1:]
  assert got['cosine'][0] == 64 and got['cosine'][-1] == 0
  assert got['schedules'] == sorted(['linear', 'cosine', 'square', 'cubic', 'sqrt', 'log', 'exp'])
  # Editing: same shapes, tokens outside the region kept, tokens inside the hole regenerated
  # (no mask id left).
  assert got['kept']
  assert got['inpainted'] == got['outpainted'] == got['retargeted'] == [10, 32, 32, 3]
  assert max(max(row) for row in got['inpainted_tokens']) < 64
  assert displayed(nb, 'image/png') >= 5  # samples, steps, schedule plot, edits


def test_magvit_notebook_runs(kernel_env):
  nb, got, _ = run_notebook(
    'magvit.ipynb',
    kernel_env,
    """{
      'max_abs_diff': inflation_max_abs_diff, 'tokens_equal': inflation_tokens_equal,
      'recon': [list(clip_recon.shape), str(clip_recon.dtype)], 'tokens': list(clip_tokens.shape),
      'psnr': tokenizer_psnr, 'known_all': list(known_all.shape),
      'known_fraction': {t: float(k.mean()) for t, k in zip(commit.TASKS, known_all)},
      'tasks': {t: [list(r['videos'].shape), str(r['videos'].dtype), list(r['known'].shape),
                    bool(np.array_equal(r['videos'][r['known']], task_clips[r['known']])),
                    bool(r['known'].any()), bool((~r['known']).any()),
                    int((r['history'][-1] == sampler.model.mask_token_id).sum()),
                    r['labels'].tolist()]
                for t, r in task_results.items()},
      'kept': kept, 'task_labels': task_labels.tolist(), 'null_label': sampler.model.null_label,
      'table': psnr_table, 'eval_clips': list(eval_clips.shape),
      'gifs': {t: os.path.getsize(p) for t, p in task_gifs.items()},
      'recon_gif': os.path.getsize(recon_gif),
      'written': sorted(os.listdir(os.path.join(WORKDIR, 'magvit_tasks', 'FP'))),
      'dirs': [dir2d, dir3d, commit_dir]}""",
  )
  runs = kernel_env / 'runs'
  assert got['dirs'] == [
    str(runs / d) for d in ('magvit_vqgan2d', 'magvit_tokenizer3d', 'magvit_commit')
  ]
  # Inflation: on a static clip the inflated 3D-VQ reproduces the 2D VQGAN's reconstruction.
  assert got['max_abs_diff'] < 1e-3 and got['tokens_equal']
  # The 3D-VQ (tiny: 4 frames of 16x16 -> 2 x 8 x 8 tokens) on 8 held-out clips.
  assert got['recon'] == [[8, 4, 16, 16, 3], 'uint8']
  assert got['tokens'] == [8, 2, 8, 8]
  assert 5.0 < got['psnr'] < 60.0
  # The condition picture: the known pixels of the ten tasks (fp_frames 2, fi_frames 1, boxes
  # half the height and width).
  assert got['known_all'] == [10, 4, 16, 16]
  assert got['known_fraction'] == {
    'FP': 0.5,
    'FI': 0.5,
    'OPC': 0.25,
    'OPV': 0.5,
    'OPH': 0.5,
    'OPD': 0.25,
    'IPC': 0.75,
    'IPD': 0.75,
    'CG': 0.0,
    'CFP': 0.5,
  }
  # Every task on 2 clips: full videos, known pixels exactly the ground truth, nothing left
  # masked, the class given to CG / CFP only.
  assert sorted(got['tasks']) == sorted(got['known_fraction'])
  for task, (shape, dtype, known, unchanged, some_known, some_unknown, left_masked, labels) in got[
    'tasks'
  ].items():
    assert shape == [2, 4, 16, 16, 3] and dtype == 'uint8' and known == [2, 4, 16, 16], task
    assert unchanged and got['kept'][task], task
    assert some_unknown and (some_known or task == 'CG'), task
    assert left_masked == 0, task
    assert labels == (got['task_labels'] if task in ('CG', 'CFP') else [got['null_label']] * 2)
  # The PSNR table: FP and FI against their baselines, finite, on 8 clips.
  assert got['eval_clips'] == [8, 4, 16, 16, 3]
  assert sorted(got['table']) == ['FI', 'FP']
  for task, row in got['table'].items():
    assert row['clips'] == 8, task
    assert 3.0 < row['model'] < 60.0 and 3.0 < row['baseline'] < 60.0, task
  assert got['table']['FP']['baseline_name'] == 'copy the last known frame'
  assert got['written'] == ['grid.png', 'samples.gif', 'samples.npz']
  assert got['recon_gif'] > 0 and min(got['gifs'].values()) > 0
  assert displayed(nb, 'image/gif') == 11  # reconstructions + one per task
  assert displayed(nb, 'image/png') >= 4  # inflation, reconstructions, conditions, per frame
  assert displayed(nb, 'text/markdown') == 1  # the PSNR table


@pytest.mark.parametrize('path', sorted(NOTEBOOKS.glob('*.ipynb')), ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  dirty = [
    i
    for i, c in enumerate(nb.cells)
    if c.cell_type == 'code' and (c.outputs or c.execution_count is not None)
  ]
  assert not dirty, (
    f'{path.name}: code cells {dirty} carry outputs or execution counts; '
    f'clear them before committing (Jupyter: Edit > Clear All Outputs; or see '
    f'notebooks/README.md)'
  )


def test_notebooks_exist():
  assert {p.name for p in NOTEBOOKS.glob('*.ipynb')} >= {
    'tokenizer.ipynb',
    'maskgit.ipynb',
    'magvit.ipynb',
  }
