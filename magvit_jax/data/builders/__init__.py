"""TFDS builders: the embedded datasets and `magvit_video_files` (a local folder of video files).

Importing this package imports TensorFlow/TFDS."""

from magvit_jax.data.builders.digits import MagvitDigits  # noqa: F401  (registers `magvit_digits`)
from magvit_jax.data.builders.moving_digits import MagvitMovingDigits  # noqa: F401,E501
from magvit_jax.data.builders.video_files import MagvitVideoFiles  # noqa: F401,E501
