"""Metrics to the console, a JSONL file and TensorBoard event files."""

from __future__ import annotations

import json
import time

from absl import logging
from etils import epath
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/`.

  Each JSONL line is {"step": N, "split": "train", "time": unix seconds,
  ...scalars}. A resumed run appends, so steps between the last checkpoint
  and an interruption appear twice; the later line is the resumed run's.
  """

  def __init__(self, workdir):
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl_path = workdir / "metrics.jsonl"
    # Bucket objects cannot be appended to, so a remote file is rewritten
    # whole from these lines at every write.
    # NOTE: the remote branch has not been run against a real bucket.
    self._remote = "://" in str(workdir)
    self._lines = []
    if self._remote and self._jsonl_path.exists():
      self._lines = self._jsonl_path.read_text().splitlines(keepends=True)
    self._jsonl = None if self._remote else open(self._jsonl_path, "a")
    # tensorboardX writes gs:// paths itself (with google-cloud-storage).
    self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, split: str, scalars: dict) -> None:
    record = {"step": step, "split": split, "time": time.time()}
    record.update({key: float(value) for key, value in scalars.items()})
    line = json.dumps(record) + "\n"
    if self._remote:
      self._lines.append(line)
      self._jsonl_path.write_text("".join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for key, value in scalars.items():
      self._tensorboard.add_scalar(f"{split}/{key}", float(value), step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    self._tensorboard.close()


class NullWriter:
  """Stands in for MetricWriter in processes other than process 0."""

  def write(self, step: int, split: str, scalars: dict) -> None:
    del step, split, scalars

  def close(self) -> None:
    pass


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict]:
  """Latest record per step of `split` from a workdir's metrics.jsonl."""
  records = {}
  text = (epath.Path(workdir) / "metrics.jsonl").read_text()
  for line in text.splitlines():
    record = json.loads(line)
    if record["split"] == split:
      records[record["step"]] = record
  return records


class Throughput:
  """Examples per second and ETA between successive logging points."""

  def __init__(self, batch_size: int, total_steps: int, start_step: int):
    self.batch_size = batch_size
    self.total_steps = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def reset(self, step: int) -> None:
    """Restart timing at `step`, leaving out time spent since the last update."""
    self._last_step, self._last_time = step, time.perf_counter()

  def update(self, step: int) -> tuple[float, float]:
    """Return (examples per second, seconds left) since the last update."""
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    seconds_per_step = (now - self._last_time) / steps
    self._last_step, self._last_time = step, now
    eta = seconds_per_step * (self.total_steps - step)
    return self.batch_size / seconds_per_step, eta


def log_train_line(step: int, total_steps: int, scalars: dict,
                   examples_per_second: float, eta_seconds: float) -> None:
  logging.info(
      "step %d/%d  loss %.4f  lr %.3g  grad norm %.3g  logit scale %.2f  "
      "%.1f examples/s  ETA %s", step, total_steps, scalars["loss"],
      scalars["learning_rate"], scalars["grad_norm"], scalars["logit_scale"],
      examples_per_second, _format_duration(eta_seconds))


def _format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"
