"""Prepare a folder of video files as the TFDS dataset `magvit_video_files/<config name>`.

  python -m magvit_jax.data.prepare_video_files --src=/path/to/videos \\
      --data_dir=$MAGVIT_DATA_DIR --num_frames=16 --image_size=64 [--fps=8] [--stride=8] \\
      [--clips_per_video=4] [--config_name=kinetics_t16] [--overwrite]

`--src` holds `<split>/<class_name>/<video>.mp4` (or `<split>/<video>.mp4` without labels; see
`magvit_jax/data/builders/video_files.py`); without `--src`, TFDS's manual dir
`<data_dir>/downloads/manual` is read. Prints the `data.name` to train with and how many files
were skipped because they failed to decode (each is named in a warning). Never downloads.

The library side is `magvit_jax.data.builders.video_files.prepare`.
"""

from __future__ import annotations

import os

from absl import flags

from magvit_jax import cli_errors
from magvit_jax.data.builders import video_files

_SRC = flags.DEFINE_string(
  'src', None, 'The folder of video files; default: <data_dir>/downloads/manual.'
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir', None, 'TFDS data_dir; default: $MAGVIT_DATA_DIR, else ~/.cache/magvit_jax/...'
)
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 16, 'Frames per clip.')
_IMAGE_SIZE = flags.DEFINE_integer(
  'image_size', 64, 'Clip height = width (shorter side resized, center crop).'
)
_FPS = flags.DEFINE_float('fps', None, "Resample to this frame rate; default: the file's frames.")
_STRIDE = flags.DEFINE_integer(
  'stride', None, 'Frames between clip starts; default: num_frames (non-overlapping clips).'
)
_CLIPS_PER_VIDEO = flags.DEFINE_integer(
  'clips_per_video', 0, 'At most this many clips per video, evenly spread; 0: all.'
)
_CONFIG_NAME = flags.DEFINE_string(
  'config_name', None, 'Config name; default from the settings, e.g. t16_s64_fps8.'
)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild a dataset prepared before.')


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  builder = video_files.prepare(
    _SRC.value,
    _DATA_DIR.value,
    num_frames=_NUM_FRAMES.value,
    image_size=_IMAGE_SIZE.value,
    fps=_FPS.value,
    stride=_STRIDE.value,
    clips_per_video=_CLIPS_PER_VIDEO.value,
    config_name=_CONFIG_NAME.value,
    overwrite=_OVERWRITE.value,
  )
  info = builder.info
  meta = info.metadata or {}
  splits = ', '.join(f'{s}: {info.splits[s].num_examples} clips' for s in sorted(info.splits))
  print(f'prepared {info.full_name} in {builder.data_dir}')
  print(f'  {splits}; videos per split {meta.get("num_videos")}')
  skipped = meta.get('num_skipped_files', 0)
  print(f'  skipped {skipped} files that failed to decode')
  for split, files in sorted((meta.get('skipped_files') or {}).items()):
    for path, why in files:
      print(f'    {split}: {path}: {why}')
  name = f'{info.name}/{builder.builder_config.name}'
  # The data_dir holds <name>/<config>/<version>/.
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))
  print(f"train with: --config.data.name='{name}' --config.data.data_dir='{data_dir}'")


if __name__ == '__main__':
  cli_errors.run(main)
