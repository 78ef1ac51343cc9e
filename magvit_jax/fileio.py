"""Workdir file I/O that works the same on local disks and object stores (gs://, s3://).

Every path goes through `etils.epath.Path`, the path type orbax uses for the
checkpoints: local paths use `os`, URI paths (`gs://bucket/run`) use
`tf.io.gfile` when TensorFlow is installed (it is for the data pipeline) or
fsspec otherwise (then `pip install gcsfs` for gs://). Nothing here imports
TensorFlow itself.

Object stores differ from a disk in two ways that matter here:
  * no append: files that grow (metrics) are written as new files instead,
    see `magvit_jax.metrics_writer`;
  * no atomic rename (GCS rename is copy + delete), but an object only becomes
    visible once its upload completes, so `write_text_atomic` writes remote
    files in one go and uses write-then-rename locally.
"""

from __future__ import annotations

import os

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """True for URI paths such as 'gs://bucket/run' (served by gfile/fsspec, not `os`)."""
  scheme, sep, _ = os.fspath(path).partition('://')
  return bool(sep) and scheme.isalnum()


def as_path(path: PathLike) -> epath.Path:
  return epath.Path(path)


def join(path: PathLike, *parts: str) -> str:
  """`os.path.join` that keeps 'gs://' intact; returns a str."""
  return os.fspath(epath.Path(path, *parts))


def makedirs(path: PathLike) -> epath.Path:
  """`mkdir -p`; on object stores directories are implicit and this is (nearly) free."""
  p = epath.Path(path)
  p.mkdir(parents=True, exist_ok=True)
  return p


def exists(path: PathLike) -> bool:
  return epath.Path(path).exists()


def read_text(path: PathLike) -> str:
  return epath.Path(path).read_text()


def write_text_atomic(path: PathLike, text: str) -> None:
  """Writes `text` so that readers see the old file or the new one, never a partial one.

  Local: write `<path>.tmp`, then rename it over `path`. Remote: one object
  upload (atomic by itself; a rename there would be a non-atomic copy).
  """
  p = epath.Path(path)
  if is_remote(path):
    p.write_text(text)
    return
  tmp = p.with_name(p.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(p)
