"""TFDS builders of the embedded datasets. Importing this package imports TensorFlow/TFDS."""

from magvit_jax.data.builders.digits import MagvitDigits  # noqa: F401  (registers `magvit_digits`)
from magvit_jax.data.builders.moving_digits import MagvitMovingDigits  # noqa: F401,E501
