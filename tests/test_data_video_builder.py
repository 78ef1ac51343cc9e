"""The TFDS builder `magvit_video_files` (a folder of video files -> TFRecords of clips).

Videos are encoded here with PyAV (h264 or mpeg4): frames whose red channel is RED_STEP * frame
index and whose green/blue channels are horizontal/vertical ramps, so the center crop, the
resize, the frame order and the fps resampling all show in the pixels. The datasets are prepared
in-process (`prepare`); the command line (`python -m magvit_jax.data.prepare_video_files`) runs
in a subprocess in a slow test.
"""

import logging
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from magvit_jax.data import pipeline
from magvit_jax.data.builders import video_files

av = pytest.importorskip('av')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RED_STEP = 5
T, S = 8, 16  # num_frames, image_size of the dataset prepared by the CLI.
# (split/class/file, frames at 30 fps, height x width)
VIDEOS = {
  'train/cat/a.mp4': (48, (36, 52)),  # 11 clips of 8 at stride 4; landscape
  'train/dog/b.mov': (12, (40, 30)),  # 2 clips; portrait
  'train/dog/short.mp4': (5, (32, 32)),  # shorter than T: one clip, padded
  'test/cat/c.mp4': (16, (36, 52)),  # 3 clips
}
CLIPS = {'train/cat/a.mp4': 11, 'train/dog/b.mov': 2, 'train/dog/short.mp4': 1, 'test/cat/c.mp4': 3}


def _encoder(*names):
  for name in names:
    try:
      av.codec.Codec(name, 'w')
      return name
    except Exception:  # pylint: disable=broad-except
      continue
  raise AssertionError(f'PyAV has none of the encoders {names}')


CODEC = _encoder('libx264', 'h264', 'mpeg4')


def _write_video(path, n, size, fps=30):
  """n frames [h, w] = size: red RED_STEP * k, green and blue ramps along x and y."""
  h, w = size
  with av.open(str(path), 'w') as container:
    stream = container.add_stream(CODEC, rate=fps)
    stream.height, stream.width = h, w
    stream.pix_fmt = 'yuv420p'
    stream.bit_rate = 4_000_000
    for k in range(n):
      frame = np.empty((h, w, 3), np.uint8)
      frame[..., 0] = RED_STEP * k
      frame[..., 1] = (np.arange(w) * 200 // w)[None, :]
      frame[..., 2] = (np.arange(h) * 200 // h)[:, None]
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _decode_all(path):
  """Every frame of a video file, decoded directly with PyAV: uint8 [n, H, W, 3]."""
  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])


def _crop_resize(frames, size):
  """The expected spatial transform: center square crop, antialiased bilinear resize, round."""
  h, w = frames.shape[1:3]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  crop = frames[:, top : top + side, left : left + side].astype(np.float32)
  small = tf.image.resize(crop, (size, size), method='bilinear', antialias=True).numpy()
  return np.clip(np.round(small), 0, 255).astype(np.uint8)


def _examples(builder, split):
  """{(path, clip_start): example} of a split."""
  out = {}
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    out[(ex['path'].decode(), int(ex['clip_start']))] = ex
  return out


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  for rel, (n, size) in VIDEOS.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    _write_video(root / rel, n, size)
  (root / 'train' / 'dog' / 'noise.mp4').write_bytes(np.random.default_rng(0).bytes(4000))
  good = (root / 'train' / 'dog' / 'b.mov').read_bytes()
  (root / 'train' / 'cat' / 'cut.mp4').write_bytes(good[: len(good) // 2])
  (root / 'train' / 'cat' / 'notes.txt').write_text('not a video')
  return root


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def prepared(source, tmp_path_factory):
  """(data_dir, warnings logged while building, read-only builder) of the dataset."""
  data_dir = tmp_path_factory.mktemp('tfds')
  records = _Records()
  logging.getLogger('absl').addHandler(records)
  try:
    built = video_files.prepare(str(source), str(data_dir), num_frames=T, image_size=S, stride=4)
  finally:
    logging.getLogger('absl').removeHandler(records)
  builder = pipeline.get_builder('magvit_video_files/t8_s16_stride4', str(data_dir))
  assert builder.data_dir == built.data_dir
  return data_dir, '\n'.join(records.messages), builder


def test_clip_counts_shapes_labels_and_metadata(prepared):
  _, out, builder = prepared
  info = builder.info
  assert info.splits['train'].num_examples == 11 + 2 + 1
  assert info.splits['test'].num_examples == 3
  assert info.features['label'].names == ['cat', 'dog']
  train, test = _examples(builder, 'train'), _examples(builder, 'test')
  assert sorted(train) == sorted(
    [('train/cat/a.mp4', s) for s in range(0, 41, 4)]
    + [('train/dog/b.mov', 0), ('train/dog/b.mov', 4), ('train/dog/short.mp4', 0)]
  )
  assert sorted(test) == [('test/cat/c.mp4', 0), ('test/cat/c.mp4', 4), ('test/cat/c.mp4', 8)]
  for (path, _), ex in {**train, **test}.items():
    assert ex['video'].shape == (T, S, S, 3) and ex['video'].dtype == np.uint8
    assert ex['label'] == ('/dog/' in path)
  meta = info.metadata
  assert meta['num_skipped_files'] == 2
  assert sorted(p for p, _ in meta['skipped_files']['train']) == [
    'train/cat/cut.mp4',
    'train/dog/noise.mp4',
  ]
  assert meta['num_videos'] == {'train': 3, 'test': 1}
  assert meta['num_padded_videos'] == {'train': 1, 'test': 0}
  # Each skipped file is named in a warning.
  for bad in ('train/dog/noise.mp4', 'train/cat/cut.mp4'):
    assert f'skipped {os.path.join(meta["source"], bad)}, which failed to decode' in out


def test_pixels_equal_a_direct_pyav_decode_after_the_same_resize(prepared, source):
  _, _, builder = prepared
  train = _examples(builder, 'train')
  for rel in ('train/cat/a.mp4', 'train/dog/b.mov'):
    frames = _crop_resize(_decode_all(source / rel), S)
    assert len(frames) == VIDEOS[rel][0]
    for start in range(0, CLIPS[rel] * 4, 4):
      np.testing.assert_array_equal(train[(rel, start)]['video'], frames[start : start + T])
  # Red channel: the frame index survives the codec (a check that the reference is no copy).
  red = train[('train/cat/a.mp4', 40)]['video'][..., 0].mean((1, 2))
  np.testing.assert_allclose(red, RED_STEP * np.arange(40, 48), atol=3)
  # A video shorter than T repeats its last frame.
  short = _crop_resize(_decode_all(source / 'train/dog/short.mp4'), S)
  expected = short[np.minimum(np.arange(T), len(short) - 1)]
  np.testing.assert_array_equal(train[('train/dog/short.mp4', 0)]['video'], expected)


def test_fps_resampling_and_clips_per_video(source, tmp_path):
  # 30 fps files read at 10 fps: every third frame; a.mp4 (48 frames, 1.6 s) -> 16 frames.
  builder = video_files.prepare(
    str(source), str(tmp_path), num_frames=4, image_size=8, fps=10, clips_per_video=3
  )
  assert builder.info.full_name == 'magvit_video_files/t4_s8_fps10_k3/1.0.0'
  train = _examples(builder, 'train')
  # 16 resampled frames, windows of 4 at 0, 4, 8, 12; 3 evenly spread: 0, 8 (rounded), 12.
  assert sorted(s for p, s in train if p == 'train/cat/a.mp4') == [0, 8, 12]
  frames = _crop_resize(_decode_all(source / 'train/cat/a.mp4'), 8)
  for start in (0, 8, 12):
    np.testing.assert_array_equal(
      train[('train/cat/a.mp4', start)]['video'], frames[3 * start : 3 * start + 12 : 3]
    )
  # b.mov: 12 frames (0.4 s) -> 4 resampled frames, one clip.
  assert sorted(s for p, s in train if p == 'train/dog/b.mov') == [0]
  # Prepared again with the same settings and source: reused, not rebuilt.
  again = video_files.prepare(
    str(source), str(tmp_path), num_frames=4, image_size=8, fps=10, clips_per_video=3
  )
  assert again.data_dir == builder.data_dir
  with pytest.raises(ValueError, match='already prepared .* from'):
    video_files.prepare(
      str(tmp_path), str(tmp_path), num_frames=4, image_size=8, fps=10, clips_per_video=3
    )


def test_clip_starts():
  np.testing.assert_array_equal(video_files.clip_starts(20, 8), [0, 8])
  np.testing.assert_array_equal(video_files.clip_starts(20, 8, stride=4), [0, 4, 8, 12])
  np.testing.assert_array_equal(video_files.clip_starts(5, 8), [0])
  np.testing.assert_array_equal(video_files.clip_starts(100, 10, 1, clips_per_video=2), [0, 90])


def test_errors_name_the_source_and_the_setting(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(
    pipeline.DatasetNotPreparedError, match=re.escape(str(missing)) + '.* does not exist'
  ):
    video_files.prepare(str(missing), str(tmp_path / 'tfds'))
  empty = tmp_path / 'empty'
  (empty / 'train' / 'cat').mkdir(parents=True)
  (empty / 'train' / 'cat' / 'readme.txt').write_text('no videos here')
  with pytest.raises(
    pipeline.DatasetNotPreparedError, match=re.escape(str(empty)) + '.* holds no video files'
  ):
    video_files.prepare(str(empty), str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='num_frames must be a positive int, got 0'):
    video_files.VideoFilesConfig(name='', src=str(empty), num_frames=0)
  with pytest.raises(ValueError, match='fps must be a positive number'):
    video_files.VideoFilesConfig(name='', src=str(empty), fps=-1.0)
  # Not prepared: the error says how to prepare it.
  with pytest.raises(pipeline.DatasetNotPreparedError, match='prepare_video_files --src='):
    pipeline.get_builder('magvit_video_files/t8_s16', str(tmp_path / 'tfds'))


def test_manual_dir_without_class_folders_has_no_label(tmp_path):
  manual = tmp_path / 'tfds' / 'downloads' / 'manual'  # TFDS's manual dir: no src needed.
  (manual / 'train').mkdir(parents=True)
  _write_video(manual / 'train' / 'x.mp4', 6, (24, 24))
  builder = video_files.prepare(None, str(tmp_path / 'tfds'), num_frames=3, image_size=8)
  assert 'label' not in builder.info.features
  assert sorted(_examples(builder, 'train')) == [('train/x.mp4', 0), ('train/x.mp4', 3)]
  assert builder.info.metadata['source'] == str(manual)
  again = video_files.prepare(None, str(tmp_path / 'tfds'), num_frames=3, image_size=8)
  assert again.data_dir == builder.data_dir


def test_the_data_pipeline_reads_it(prepared):
  data_dir, _, builder = prepared
  cfg = ml_collections.ConfigDict(
    dict(
      name='magvit_video_files/t8_s16_stride4',
      data_dir=str(data_dir),
      image_size=S,
      shuffle_buffer=8,
    )
  )
  kw = dict(process_index=0, process_count=1)
  it = pipeline.create_dataset(cfg, split='train', batch_size=4, train=True, seed=0, **kw)
  for _ in range(2):
    batch = next(it)
    assert batch['video'].shape == (4, T, S, S, 3) and batch['video'].dtype == np.uint8
    assert set(batch['label'].tolist()) <= {0, 1}
  # Eval: the stored clips unchanged (same size: no resize; all T frames).
  test = _examples(builder, 'test')
  it = pipeline.create_dataset(cfg, split='test', batch_size=3, train=False, **kw)
  batch = next(it)
  stored = sorted(ex['video'].tobytes() for ex in test.values())
  assert sorted(v.tobytes() for v in batch['video']) == stored
  assert batch['label'].tolist() == [0, 0, 0]


@pytest.mark.slow  # A subprocess that imports TensorFlow (~10 s).
def test_command_line(tmp_path):
  src = tmp_path / 'src'
  (src / 'train' / 'a').mkdir(parents=True)
  _write_video(src / 'train' / 'a' / 'ok.mp4', 6, (24, 24))
  (src / 'train' / 'a' / 'bad.webm').write_bytes(b'not a video at all' * 100)
  cmd = [sys.executable, '-m', 'magvit_jax.data.prepare_video_files', f'--src={src}']
  cmd += [f'--data_dir={tmp_path / "tfds"}', '--num_frames=3', '--image_size=8', '--fps=15']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  # 6 frames at 30 fps read at 15 fps: 3 frames, one clip.
  assert 'train: 1 clips' in out
  assert f'skipped {src / "train" / "a" / "bad.webm"}, which failed to decode' in out
  assert 'skipped 1 files that failed to decode' in out
  assert (
    f"--config.data.name='magvit_video_files/t3_s8_fps15' --config.data.data_dir='{tmp_path}/tfds'"
    in out
  )
