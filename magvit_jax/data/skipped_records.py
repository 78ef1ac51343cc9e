"""Bad records are skipped, counted, named once in the log, and bounded by a configured limit.

`pipeline.create_dataset` decodes each record under a guard: a record whose decoding fails (a
corrupt JPEG/PNG, an unreadable or truncated frame file or .npy clip) comes out as a zero
placeholder marked bad instead of ending the stream. Every row carries three extra keys:

  _position: int64 [batch]  the record's position in the stream (the global training stream,
                            or this process's eval shard)
  _bad:      bool  [batch]  decoding failed
  _source:   bytes [batch]  where the record came from (TFDS: its `tfds_id`, file and index;
                            a video folder: the clip's path)

`GoodBatches` wraps those tf.data batches on the host: it drops bad rows and rows with NaN or
Inf in a float feature (the pipeline boundary for non-finite pixels), refills each batch from
the following records so that batches keep their size, logs every skipped source once
(`[data] skipped <source> (record N of the stream): <why>`), and keeps counts:
`stats()` -> {'<stream>/skipped': records skipped so far, '<stream>/skipped_fraction': of the
records read} for the metrics log. Once at least MIN_RECORDS_FOR_LIMIT records were read and
the skipped fraction passes `max_skipped_fraction` (`data.max_skipped_fraction`), it raises
TooManyBadRecordsError naming the last bad sources: a few bad files are noise, many are a
broken dataset that should stop the run.

Resume stays exact with skipped records: `position()` is the stream position of the next row
not yet handed out, which the trainers store in each checkpoint (`data_state`) and pass back as
`create_dataset(start_position=...)` (`resume_position`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

# Below this many records read, the limit is not applied (one bad record of the first ten is
# not a 10% broken dataset).
MIN_RECORDS_FOR_LIMIT = 100
MARKER_KEYS = ('_position', '_bad', '_source')


class TooManyBadRecordsError(ValueError):
  """The skipped fraction of a data stream passed its configured limit."""


class GoodBatches:
  """Iterator of batches without bad rows; see the module docstring.

  Args:
    batches: tf.data numpy batches holding the MARKER_KEYS (from `create_dataset`).
    batch_size: rows per yielded batch.
    stream: the config section of the stream ('data', 'image_data'): names the metrics and
      the config key of the limit in the error message.
    max_skipped_fraction: the limit on skipped / read, in [0, 1].
    drop_remainder: at the end of a finite stream, drop (True) or yield (False) a final
      smaller batch.
    read, skipped: counts of earlier runs of the same training stream (restored from a
      checkpoint), so the fraction and the metrics continue.
    log: where the one-line reports go.
  """

  def __init__(
    self,
    batches: Iterator[dict[str, np.ndarray]],
    batch_size: int,
    *,
    stream: str = 'data',
    max_skipped_fraction: float = 0.01,
    drop_remainder: bool = True,
    start_position: int = 0,
    read: int = 0,
    skipped: int = 0,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
  ):
    self._batches = batches
    self._batch_size = int(batch_size)
    self._stream = stream
    self._limit = float(max_skipped_fraction)
    self._drop_remainder = drop_remainder
    self._log = log
    self._buffer: list[dict[str, np.ndarray]] = []  # Good rows not handed out yet, in order.
    self._buffered_positions: list[np.ndarray] = []
    self._next_raw = int(start_position)  # Position after the last record read.
    self.read = int(read)
    self.skipped = int(skipped)
    self._recent: list[str] = []  # The last few bad sources, for the limit's message.
    self._logged: set[str] = set()

  def __iter__(self) -> 'GoodBatches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    while self._buffered() < self._batch_size:
      try:
        raw = next(self._batches)
      except StopIteration:
        if self._buffered() and not self._drop_remainder:
          return self._emit(self._buffered())
        raise
      self._take(raw)
    return self._emit(self._batch_size)

  def position(self) -> int:
    """The stream position of the next row this iterator will yield (resume from here)."""
    if self._buffered_positions and len(self._buffered_positions[0]):
      return int(self._buffered_positions[0][0])
    return self._next_raw

  def state(self) -> dict[str, int]:
    """{'position', 'read', 'skipped'} of this process (what a checkpoint stores)."""
    return {'position': self.position(), 'read': self.read, 'skipped': self.skipped}

  def stats(self) -> dict[str, float]:
    """Metrics of this process: {'<stream>/skipped', '<stream>/skipped_fraction'}."""
    return {
      f'{self._stream}/skipped': float(self.skipped),
      f'{self._stream}/skipped_fraction': self.skipped / max(self.read, 1),
    }

  def _buffered(self) -> int:
    return sum(len(p) for p in self._buffered_positions)

  def _take(self, raw: dict[str, np.ndarray]) -> None:
    missing = [k for k in MARKER_KEYS if k not in raw]
    if missing:
      raise KeyError(f'a batch of stream {self._stream!r} lacks the pipeline keys {missing}')
    positions = np.asarray(raw['_position'], np.int64)
    sources = raw['_source']
    bad = np.asarray(raw['_bad'], bool).copy()
    why = ['could not be decoded' if b else '' for b in bad]
    features = {k: v for k, v in raw.items() if k not in MARKER_KEYS}
    for key, value in features.items():
      if np.issubdtype(value.dtype, np.floating):
        finite = np.isfinite(value).reshape(value.shape[0], -1).all(axis=1)
        for i in np.flatnonzero(~finite & ~bad):
          why[i] = f'NaN or Inf values in {key!r}'
        bad |= ~finite
    self.read += len(positions)
    self.skipped += int(bad.sum())
    if len(positions):
      self._next_raw = int(positions[-1]) + 1
    for i in np.flatnonzero(bad):
      source = _text(sources[i])
      self._recent = (self._recent + [source])[-3:]
      if source not in self._logged:
        self._logged.add(source)
        self._log(
          f'[data] skipped {source} (record {int(positions[i])} of the {self._stream} '
          f'stream): {why[i]}'
        )
    self._check_limit()
    keep = ~bad
    if keep.any():
      self._buffer.append({k: v[keep] for k, v in features.items()})
      self._buffered_positions.append(positions[keep])

  def _check_limit(self) -> None:
    if self.read < MIN_RECORDS_FOR_LIMIT or self.skipped <= self._limit * self.read:
      return
    raise TooManyBadRecordsError(
      f'{self.skipped} of the {self.read} records read from the {self._stream} stream could '
      f'not be used ({self.skipped / self.read:.1%} > {self._stream}.max_skipped_fraction='
      f'{self._limit:g}); the last ones: {", ".join(self._recent)}. Repair or remove the bad '
      f'files, or raise the limit with --config.{self._stream}.max_skipped_fraction=...'
    )

  def _emit(self, n: int) -> dict[str, np.ndarray]:
    keys = list(self._buffer[0])
    rows = {k: np.concatenate([b[k] for b in self._buffer]) for k in keys}
    positions = np.concatenate(self._buffered_positions)
    out = {k: v[:n] for k, v in rows.items()}
    self._buffer = [{k: v[n:] for k, v in rows.items()}] if len(positions) > n else []
    self._buffered_positions = [positions[n:]] if len(positions) > n else []
    return out


def _text(source: Any) -> str:
  return source.decode(errors='replace') if isinstance(source, bytes) else str(source)


def resume_position(
  data_state: dict | None, stream: str, process_index: int, process_count: int
) -> dict[str, int] | None:
  """This process's {'position', 'read', 'skipped'} of `stream` from a checkpoint's data state.

  data_state: {stream: {'position': [per process], 'read': [...], 'skipped': [...]}} as the
    training loop saves it, or None (a checkpoint saved without it: the caller falls back to
    `start_step * global batch`).
  With another process count than the saved one, every process starts at the smallest saved
  position (the rows of each process differ then; a few records are read twice, none is lost).
  A data state that names its 'host_sharding' (written since `data.host_sharding` exists)
  also gives back that and the saved 'process_count', so that `create_dataset` can refuse
  per-process ('files') positions under another process count.
  """
  if not data_state or stream not in data_state:
    return None
  saved = data_state[stream]
  positions = [int(p) for p in saved['position']]
  if len(positions) == process_count:
    i = process_index
    out = {
      'position': positions[i],
      'read': int(saved['read'][i]),
      'skipped': int(saved['skipped'][i]),
    }
  else:
    out = {'position': min(positions), 'read': 0, 'skipped': 0}
  if 'host_sharding' in saved:
    out.update(host_sharding=str(saved['host_sharding']), process_count=len(positions))
  return out
