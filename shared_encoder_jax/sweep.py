"""Sweeps over configs: grid expansion, run status, results and reports.

A sweep file is a Python file whose `get_sweep(arg="")` returns a ConfigDict
made with `new_sweep()` (or a plain dict) with these fields:

  name           folder of the sweep under the root (default: the file name,
                 plus "-ARG" when an argument is given)
  base_config    config file every run starts from, "PATH[:ARG]"
  fixed          {dotted field: value} set in every run
  axes           {axis: {label: {dotted field: value}}}, in grid order
  exclude        label combinations to leave out: a list of
                 {axis: label or list of labels}, or a function that takes
                 {axis: label} and returns True to leave the run out
  fraction_axis  axis whose overrides set data.data_fraction (default:
                 "fraction" when there is such an axis)
  seed_axis      axis that reports average over (default: "seed" when there
                 is such an axis)

An axis may also be a sequence of (label, overrides) pairs, and overrides may
be nested ({"model": {"depth": 2}}). The grid is the Cartesian product of the
axes in their order, minus the excluded combinations. A run is named by its
labels joined with "-" and trains in ROOT/SWEEP_NAME/RUN_NAME.

Runs are `shared-encoder-train --config=BASE --workdir=W --config.F=V ...`,
so the trainer resolves every run's config the same way as a command typed
by hand. `resolve_config` applies the same overrides in Python to catch
mistakes before anything starts. Reports read each finished run's
`evaluation/test_step_<N>.json` and `metrics.jsonl`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import importlib.util
import itertools
import json
import math
import re
from typing import Any, Callable, Mapping, Sequence

import ml_collections
from absl import logging
from etils import epath

from shared_encoder_jax import config as config_lib

RUN_RECORD_FILE = "sweep_run.json"
LOG_FILE = "train.log"
DEFAULT_METRIC = "mean_recall@10"
DIRECTIONS = ("image_to_text", "text_to_image")
STATE_DONE, STATE_PARTIAL, STATE_NEW = "done", "partial", "new"

_SWEEP_FIELDS = ("name", "base_config", "fixed", "axes", "exclude",
                 "fraction_axis", "seed_axis")
_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
_AXIS_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
_TEST_FILE_PATTERN = re.compile(r"^test_step_(\d+)\.json$")
_FRACTION_FIELD = "data.data_fraction"


class SweepError(ValueError):
  """A sweep file, a run's overrides or a run's workdir is invalid."""


def new_sweep() -> ml_collections.ConfigDict:
  """Return an empty sweep that keeps assigned dicts as plain dicts.

  A default ConfigDict turns dicts into ConfigDicts, which reject the dotted
  field names of overrides and labels such as "f0.05".
  """
  return ml_collections.ConfigDict(convert_dict=False)


def early_specific_layers(num_specific: int, depth: int) -> str:
  """Return `model.shared_layers` with the first layers modality-specific.

  `model.shared_layers` lists the shared layers, so the first
  `num_specific` layers get one block per modality and the rest are shared.
  """
  _check_num_specific(num_specific, depth)
  if num_specific == depth:
    return "none"
  return f"{num_specific}-{depth - 1}" if num_specific else "all"


def late_specific_layers(num_specific: int, depth: int) -> str:
  """Return `model.shared_layers` with the last layers modality-specific."""
  _check_num_specific(num_specific, depth)
  if num_specific == depth:
    return "none"
  return f"0-{depth - num_specific - 1}" if num_specific else "all"


def _check_num_specific(num_specific: int, depth: int) -> None:
  if not 0 <= num_specific <= depth:
    raise SweepError(f"{num_specific} modality-specific layers do not fit a "
                     f"model of depth {depth}; use 0 to {depth}.")


# Sweep definition and grid expansion.


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of the grid."""
  name: str
  labels: dict[str, str]  # axis -> label, in axis order
  overrides: dict[str, Any]  # dotted field -> value: fixed, then each axis


@dataclasses.dataclass
class Sweep:
  """A loaded sweep file."""
  spec: str  # the sweep file, PATH[:ARG]
  name: str
  base_config: str
  fixed: dict[str, Any]
  axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]]
  exclude: Callable[[dict[str, str]], bool] | list[dict[str, tuple[str, ...]]]
  fraction_axis: str | None
  seed_axis: str | None

  @property
  def axis_names(self) -> list[str]:
    return [name for name, _ in self.axes]

  @property
  def variant_axes(self) -> list[str]:
    """Axes that tell variants apart: all but the fraction and seed axes."""
    return [name for name in self.axis_names
            if name not in (self.fraction_axis, self.seed_axis)]

  def runs(self) -> list[Run]:
    """Expand the grid in axis order, leaving out excluded combinations."""
    runs = []
    names = {}
    for combination in itertools.product(*(values for _, values in self.axes)):
      labels = {axis: label for axis, (label, _) in
                zip(self.axis_names, combination)}
      if self._excluded(labels):
        continue
      name = "-".join(labels.values())
      if name in names:
        raise SweepError(
            f"Sweep {self.name!r}: the label combinations {names[name]} and "
            f"{labels} both give the run name {name!r}. Choose labels that "
            "do not run together when joined with '-'.")
      names[name] = labels
      overrides = self._merge_overrides(name, labels, combination)
      runs.append(Run(name=name, labels=labels, overrides=overrides))
    if not runs:
      raise SweepError(f"Sweep {self.name!r} ({self.spec}): the exclusions "
                       "leave no runs.")
    return runs

  def variant(self, run: Run) -> str:
    """Return the labels of the variant axes joined with "-"."""
    labels = [run.labels[axis] for axis in self.variant_axes]
    return "-".join(labels) if labels else "all"

  def _excluded(self, labels: dict[str, str]) -> bool:
    if callable(self.exclude):
      return bool(self.exclude(dict(labels)))
    return any(all(labels[axis] in allowed for axis, allowed in rule.items())
               for rule in self.exclude)

  def _merge_overrides(self, name, labels, combination) -> dict[str, Any]:
    overrides = dict(self.fixed)
    source = {field: "fixed" for field in self.fixed}
    for axis, (label, axis_overrides) in zip(self.axis_names, combination):
      for field, value in axis_overrides.items():
        if field in overrides and overrides[field] != value:
          raise SweepError(
              f"Sweep {self.name!r}, run {name!r}: {field} is set by "
              f"{source[field]} and by axis {axis!r} (label {label!r}). Set "
              "each field in one place, or exclude the combination.")
        overrides[field] = value
        source[field] = f"axis {axis!r} (label {labels[axis]!r})"
    return overrides


def load_sweep(spec: str) -> Sweep:
  """Load a sweep file given as PATH or PATH:ARG."""
  path, separator, arg = spec.partition(":")
  if not epath.Path(path).is_file():
    raise SweepError(f"Sweep file {path!r} not found.")
  module = _load_module(path, "sweep")
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"Sweep file {path!r} has no get_sweep(arg) function.")
  try:
    definition = module.get_sweep(arg) if separator else module.get_sweep()
  except ValueError as e:
    if "dots in field names" not in str(e):
      raise
    raise SweepError(
        f"Sweep file {path!r}: {e} Make the sweep with "
        "shared_encoder_jax.sweep.new_sweep() (a ConfigDict with "
        "convert_dict=False), which keeps overrides and labels as plain "
        "dicts.") from None
  default_name = epath.Path(path).stem + (f"-{arg}" if arg else "")
  return _parse_sweep(definition, spec, default_name)


def _load_module(path: str, kind: str):
  module_name = f"_{kind}_" + re.sub(r"\W", "_", str(path))
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  if module_spec is None or module_spec.loader is None:
    raise SweepError(f"Cannot load {kind} file {path!r} as Python.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _parse_sweep(definition, spec: str, default_name: str) -> Sweep:
  if not hasattr(definition, "keys"):
    raise SweepError(f"{spec}: get_sweep returned a "
                     f"{type(definition).__name__}, not a ConfigDict or dict.")
  unknown = sorted(set(definition.keys()) - set(_SWEEP_FIELDS))
  if unknown:
    raise SweepError(f"{spec}: unknown sweep field(s) {unknown}; the fields "
                     f"are {list(_SWEEP_FIELDS)}.")
  name = definition.get("name") or default_name
  if not _LABEL_PATTERN.match(name):
    raise SweepError(f"{spec}: name={name!r} must be letters, digits and "
                     "'_.+=-', because it names a folder.")
  base_config = definition.get("base_config")
  if not isinstance(base_config, str) or not base_config:
    raise SweepError(f"{spec}: base_config must name a config file, e.g. "
                     "'configs/pmc_oa_shared_feature.py:small'.")

  fixed = _flatten(definition.get("fixed") or {}, f"{spec}: fixed")
  axes_field = definition.get("axes")
  if not axes_field:
    raise SweepError(f"{spec}: axes is missing or empty; give at least one "
                     "axis {name: {label: {field: value}}}.")
  axes = []
  for axis, values in _pairs(axes_field, f"{spec}: axes"):
    if not isinstance(axis, str) or not _AXIS_PATTERN.match(axis):
      raise SweepError(f"{spec}: axis name {axis!r} must be letters, digits "
                       "and '_'.")
    if axis in dict(axes):
      raise SweepError(f"{spec}: axis {axis!r} appears twice.")
    labelled = []
    for label, overrides in _pairs(values, f"{spec}: axis {axis!r}"):
      if not isinstance(label, str) or not _LABEL_PATTERN.match(label):
        raise SweepError(
            f"{spec}: axis {axis!r} label {label!r} must be letters, digits "
            "and '_.+=-' (it becomes part of a folder name).")
      if label in dict(labelled):
        raise SweepError(f"{spec}: axis {axis!r} has label {label!r} twice.")
      labelled.append((label, _flatten(
          overrides, f"{spec}: axis {axis!r} label {label!r}")))
    if not labelled:
      raise SweepError(f"{spec}: axis {axis!r} has no values.")
    axes.append((axis, labelled))

  labels_by_axis = {axis: [label for label, _ in values]
                    for axis, values in axes}
  exclude = _parse_exclude(definition.get("exclude"), labels_by_axis, spec)
  fraction_axis = _special_axis(definition, "fraction_axis", "fraction",
                                labels_by_axis, spec)
  seed_axis = _special_axis(definition, "seed_axis", "seed", labels_by_axis,
                            spec)
  if fraction_axis is not None:
    for label, overrides in dict(axes)[fraction_axis]:
      if _FRACTION_FIELD not in overrides:
        raise SweepError(
            f"{spec}: label {label!r} of the fraction axis "
            f"{fraction_axis!r} does not set {_FRACTION_FIELD}.")
  return Sweep(spec=spec, name=name, base_config=base_config, fixed=fixed,
               axes=axes, exclude=exclude, fraction_axis=fraction_axis,
               seed_axis=seed_axis)


def _pairs(value, where: str) -> list[tuple[Any, Any]]:
  """Return the (key, value) pairs of a mapping or a sequence of pairs."""
  if hasattr(value, "items"):
    return list(value.items())
  if isinstance(value, (list, tuple)) and all(
      isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in value):
    return [tuple(pair) for pair in value]
  raise SweepError(f"{where} must be a dict or a sequence of (name, value) "
                   f"pairs, got {value!r}.")


def _flatten(overrides, where: str, prefix: str = "") -> dict[str, Any]:
  """Return {dotted field: value}; nested dicts become dotted names."""
  flat = {}
  for key, value in _pairs(overrides, where):
    if not isinstance(key, str) or not key:
      raise SweepError(f"{where}: field name {key!r} must be a non-empty "
                       "string.")
    field = prefix + key
    if hasattr(value, "items"):
      flat.update(_flatten(value, where, field + "."))
      continue
    if value is None:
      raise SweepError(f"{where}: {field}=None cannot be passed on the "
                       "command line; leave the field out instead.")
    flat[field] = value
  return flat


def _parse_exclude(exclude, labels_by_axis, spec: str):
  if exclude is None:
    return []
  if callable(exclude):
    return exclude
  if not isinstance(exclude, (list, tuple)):
    raise SweepError(f"{spec}: exclude must be a list of {{axis: label or "
                     "[labels]}} or a function of the labels.")
  rules = []
  for rule in exclude:
    parsed = {}
    for axis, allowed in _pairs(rule, f"{spec}: exclude rule {rule!r}"):
      if axis not in labels_by_axis:
        raise SweepError(f"{spec}: exclude rule {rule!r} names axis "
                         f"{axis!r}; the axes are {list(labels_by_axis)}.")
      allowed = (allowed,) if isinstance(allowed, str) else tuple(allowed)
      unknown = [label for label in allowed
                 if label not in labels_by_axis[axis]]
      if unknown:
        raise SweepError(
            f"{spec}: exclude rule {rule!r} names label(s) {unknown} of axis "
            f"{axis!r}, which has {labels_by_axis[axis]}.")
      parsed[axis] = allowed
    if not parsed:
      raise SweepError(f"{spec}: an empty exclude rule would exclude every "
                       "run.")
    rules.append(parsed)
  return rules


def _special_axis(definition, field: str, default: str, labels_by_axis,
                  spec: str) -> str | None:
  if field not in definition.keys():
    return default if default in labels_by_axis else None
  axis = definition.get(field)
  if not axis:
    return None
  if axis not in labels_by_axis:
    raise SweepError(f"{spec}: {field}={axis!r} is not an axis; the axes are "
                     f"{list(labels_by_axis)}.")
  return axis


# Commands and resolved configs.


def format_value(field: str, value) -> str:
  """Format an override value the way `--config.FIELD=VALUE` parses it."""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (int, float, str)):
    return value if isinstance(value, str) else repr(value)
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  raise SweepError(f"Override {field}={value!r}: a {type(value).__name__} "
                   "cannot be passed as --config.FIELD=VALUE; use a bool, "
                   "number, string or tuple.")


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  return [f"--config.{field}={format_value(field, value)}"
          for field, value in overrides.items()]


def train_command(program: Sequence[str], base_config: str, workdir: str,
                  overrides: Mapping[str, Any]) -> list[str]:
  """Return the trainer command line of one run."""
  return [*program, f"--config={base_config}", f"--workdir={workdir}",
          *override_flags(overrides)]


def run_workdir(root: str, sweep: Sweep, run: Run) -> str:
  # NOTE: status and reports read bucket roots (gs://) through epath; that
  # path has not been run against a real bucket.
  return "/".join([str(root).rstrip("/"), sweep.name, run.name])


def load_config_file(base_config: str) -> ml_collections.ConfigDict:
  """Load PATH[:ARG] the way `--config=PATH[:ARG]` does."""
  path, separator, arg = base_config.partition(":")
  if not epath.Path(path).is_file():
    raise SweepError(f"base_config file {path!r} not found (paths are "
                     "relative to the current directory).")
  module = _load_module(path, "config")
  return module.get_config(arg) if separator else module.get_config()


def resolve_config(base_config: str, overrides: Mapping[str, Any],
                   run_name: str = "") -> ml_collections.ConfigDict:
  """Return the base config with the overrides applied, validated.

  Raises SweepError naming the run and the field for an unknown field, a
  value of the wrong type or a value that `config.validate` rejects.
  """
  config = load_config_file(base_config)
  where = f"run {run_name!r}: " if run_name else ""
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node = config
    for depth, part in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise SweepError(f"{where}override {field}: the config has no group "
                         f"{'.'.join(parents[:depth + 1])!r}.")
      node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise SweepError(f"{where}override {field}: the config has no such "
                       "field; see shared_encoder_jax/config.py.")
    if isinstance(value, list) and isinstance(node[leaf], tuple):
      value = tuple(value)
    try:
      node[leaf] = value
    except TypeError as e:
      raise SweepError(f"{where}override {field}={value!r} has the wrong "
                       f"type: {e}") from None
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise SweepError(f"{where}{e}") from None
  return config


# Run status and the run record.


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """State of a run, read from the files in its workdir."""
  state: str  # STATE_DONE, STATE_PARTIAL or STATE_NEW
  test_step: int | None = None  # step of the newest test result
  checkpoint_step: int | None = None  # newest checkpoint
  last_exit: int | None = None  # exit status of the last sweep launch


def find_test_results(workdir) -> dict[int, epath.Path]:
  """Return {step: path} of the workdir's evaluation/test_step_<N>.json."""
  directory = epath.Path(workdir) / "evaluation"
  if not directory.is_dir():
    return {}
  files = {}
  for path in directory.iterdir():
    match = _TEST_FILE_PATTERN.match(path.name)
    if match:
      files[int(match.group(1))] = path
  return files


def checkpoint_steps(workdir) -> list[int]:
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  # Orbax writes an unfinished save to a temporary name, not a bare number.
  return sorted(int(path.name) for path in directory.iterdir()
                if path.name.isdigit())


def run_status(workdir) -> RunStatus:
  """Return done (a test result exists), partial (checkpoints) or new."""
  tests = find_test_results(workdir)
  checkpoints = checkpoint_steps(workdir)
  record = read_run_record(workdir)
  attempts = record.get("attempts", []) if record else []
  last_exit = attempts[-1].get("exit_status") if attempts else None
  if tests:
    state = STATE_DONE
  elif checkpoints:
    state = STATE_PARTIAL
  else:
    state = STATE_NEW
  return RunStatus(state=state, test_step=max(tests) if tests else None,
                   checkpoint_step=checkpoints[-1] if checkpoints else None,
                   last_exit=last_exit)


def read_run_record(workdir) -> dict | None:
  path = epath.Path(workdir) / RUN_RECORD_FILE
  if not path.exists():
    return None
  return json.loads(path.read_text())


def _json_normalized(value):
  return json.loads(json.dumps(value))


def check_run_record(workdir, sweep: Sweep, run: Run) -> None:
  """Raise SweepError if the workdir was made with other settings.

  The trainer rejects a resume only for some fields (model, tokenizer,
  dataset, seed, batch size), so a changed sweep file could otherwise mix
  two settings in one run.
  """
  record = read_run_record(workdir)
  if record is None:
    return
  differences = []
  if record.get("base_config") != sweep.base_config:
    differences.append(f"base_config {record.get('base_config')!r} -> "
                       f"{sweep.base_config!r}")
  old = record.get("overrides", {})
  new = _json_normalized(run.overrides)
  for field in sorted(set(old) | set(new)):
    if old.get(field) != new.get(field):
      differences.append(f"{field} {old.get(field)!r} -> {new.get(field)!r}")
  if differences:
    raise SweepError(
        f"Run {run.name!r} in {workdir} was started with other settings "
        f"({'; '.join(differences)}). Use another --root or sweep name, or "
        "delete the workdir to start the run again.")


def write_run_record(workdir, sweep: Sweep, run: Run, command: list[str],
                     config: ml_collections.ConfigDict,
                     attempt: dict | None = None) -> None:
  """Write `sweep_run.json`, keeping earlier attempts and adding `attempt`."""
  previous = read_run_record(workdir) or {}
  attempts = list(previous.get("attempts", []))
  if attempt is not None:
    attempts.append(attempt)
  record = {
      "sweep": sweep.name,
      "sweep_file": sweep.spec,
      "run": run.name,
      "labels": run.labels,
      "base_config": sweep.base_config,
      "overrides": run.overrides,
      "command": command,
      "config": json.loads(config.to_json()),
      "attempts": attempts,
  }
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  tmp = path / (RUN_RECORD_FILE + ".tmp")
  tmp.write_text(json.dumps(record, indent=2))
  tmp.replace(path / RUN_RECORD_FILE)


def update_last_attempt(workdir, **fields) -> None:
  """Add fields to the newest attempt in `sweep_run.json`."""
  path = epath.Path(workdir) / RUN_RECORD_FILE
  record = json.loads(path.read_text())
  record["attempts"][-1].update(fields)
  tmp = path.parent / (RUN_RECORD_FILE + ".tmp")
  tmp.write_text(json.dumps(record, indent=2))
  tmp.replace(path)


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


# Metrics.


def metric_value(metrics: dict, metric: str) -> float:
  """Read `metric` from a test or validation result.

  "mean_KEY" averages KEY over image->text and text->image,
  "DIRECTION/KEY" reads one direction and any other name a top-level key
  ("loss").
  """
  try:
    if metric.startswith("mean_"):
      key = metric[len("mean_"):]
      return sum(float(metrics[d][key]) for d in DIRECTIONS) / len(DIRECTIONS)
    if "/" in metric:
      direction, key = metric.split("/", 1)
      return float(metrics[direction][key])
    return float(metrics[metric])
  except (KeyError, TypeError):
    keys = sorted(metrics.get(DIRECTIONS[0], {}))
    raise SweepError(
        f"Metric {metric!r} is not in the evaluation result. Use "
        f"'mean_KEY', 'DIRECTION/KEY' (directions {list(DIRECTIONS)}) or "
        f"'loss', with KEY one of {keys}.") from None


def metric_chance(metrics: dict, metric: str) -> float | None:
  """Return the chance rate of a Recall@K metric, else None."""
  key = metric.split("/", 1)[-1]
  if key.startswith("mean_"):
    key = key[len("mean_"):]
  return metrics.get("chance", {}).get(key)


def is_recall(metric: str) -> bool:
  return "recall@" in metric


def validation_value(record: dict, metric: str) -> float | None:
  """Read `metric` from a validation line of metrics.jsonl.

  The trainer writes "DIRECTION/recall_at_K" there for the "recall@K" keys
  of the evaluation files.
  """
  def scalar(direction, key):
    return record.get(f"{direction}/{key.replace('@', '_at_')}")

  if metric.startswith("mean_"):
    values = [scalar(d, metric[len("mean_"):]) for d in DIRECTIONS]
    if any(value is None for value in values):
      return None
    return sum(values) / len(values)
  if "/" in metric:
    return scalar(*metric.split("/", 1))
  return record.get(metric)


# Results and summaries.


@dataclasses.dataclass
class RunResult:
  """One run of the grid with its test result, when it has one."""
  run: Run
  workdir: str
  status: RunStatus
  variant: str
  fraction: float
  seed_label: str | None
  test: dict | None = None  # evaluation/test_step_<N>.json
  value: float | None = None  # the report's metric
  chance: float | None = None


def collect_results(sweep: Sweep, root: str,
                    metric: str = DEFAULT_METRIC) -> list[RunResult]:
  """Return every run of the grid, with test results where finished."""
  default_fraction = None
  results = []
  for run in sweep.runs():
    workdir = run_workdir(root, sweep, run)
    status = run_status(workdir)
    fraction = run.overrides.get(_FRACTION_FIELD)
    if fraction is None:
      if default_fraction is None:
        default_fraction = float(
            load_config_file(sweep.base_config).data.data_fraction)
      fraction = default_fraction
    result = RunResult(
        run=run, workdir=workdir, status=status, variant=sweep.variant(run),
        fraction=float(fraction),
        seed_label=run.labels.get(sweep.seed_axis) if sweep.seed_axis
        else None)
    if status.state == STATE_DONE:
      path = find_test_results(workdir)[status.test_step]
      result.test = json.loads(path.read_text())
      result.value = metric_value(result.test, metric)
      result.chance = metric_chance(result.test, metric)
    results.append(result)
  return results


@dataclasses.dataclass
class GroupSummary:
  """Runs of one variant at one data fraction, over seeds."""
  variant: str
  labels: dict[str, str]  # variant axis -> label
  fraction: float
  seeds: list[str]  # seed labels of the finished runs
  values: list[float]
  planned: int  # runs in the group, finished or not
  chance: float | None

  @property
  def mean(self) -> float:
    return sum(self.values) / len(self.values) if self.values else math.nan

  @property
  def std(self) -> float:
    """Sample standard deviation (n - 1); NaN with fewer than two seeds."""
    n = len(self.values)
    if n < 2:
      return math.nan
    mean = self.mean
    return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (n - 1))


def summarize(sweep: Sweep, results: list[RunResult]) -> list[GroupSummary]:
  """Group by variant and fraction (variants in grid order, fractions up)."""
  groups = collections.OrderedDict()
  for result in results:
    key = (result.variant, result.fraction)
    if key not in groups:
      groups[key] = GroupSummary(
          variant=result.variant,
          labels={axis: result.run.labels[axis]
                  for axis in sweep.variant_axes},
          fraction=result.fraction, seeds=[], values=[], planned=0,
          chance=None)
    group = groups[key]
    group.planned += 1
    if result.value is not None:
      group.values.append(result.value)
      group.seeds.append(result.seed_label or result.run.name)
      if result.chance is not None:
        group.chance = result.chance
  variant_order = list(dict.fromkeys(variant for variant, _ in groups))
  return sorted(groups.values(),
                key=lambda g: (variant_order.index(g.variant), g.fraction))


def parameter_counts(workdir) -> dict[str, int] | None:
  """Count a run's parameters from its config.json and tokenizer.model.

  Uses `jax.eval_shape`, so nothing is allocated or computed. Returns None
  when the workdir lacks either file.
  """
  workdir = epath.Path(workdir)
  config_path = workdir / "config.json"
  tokenizer_path = workdir / "tokenizer.model"
  if not (config_path.exists() and tokenizer_path.exists()):
    return None
  # Imported here: only reports with finished runs need JAX.
  import jax
  from shared_encoder_jax import model as model_lib
  from shared_encoder_jax import tokenizer as tokenizer_lib

  try:
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    tokenizer = tokenizer_lib.Tokenizer.from_file(tokenizer_path,
                                                  config.model.text_context)
    model = model_lib.build_model(config.model, tokenizer.vocab_size,
                                  tokenizer.eos_id)
  except (ValueError, KeyError, AttributeError) as e:
    # TokenizerError, ConfigError and invalid JSON are ValueErrors.
    logging.warning("Cannot count the parameters of %s: %s", workdir, e)
    return None
  params = jax.eval_shape(
      lambda rng: model.init(rng, *model_lib.dummy_inputs(model))["params"],
      jax.random.PRNGKey(0))
  return model_lib.count_parameters(params)


def variant_parameter_counts(results: list[RunResult]
                             ) -> dict[str, dict[str, int] | None]:
  """Count parameters once per variant, from a finished run.

  Runs of one variant share the model fields. The tokenizer, whose size
  sets the embedding table, is trained on the whole training split (not
  the fraction), so it is the same for every run unless
  tokenizer.model_path differs.
  """
  counts = {}
  for result in sorted(results, key=lambda r: -r.fraction):
    if counts.get(result.variant) is not None:
      continue
    counts[result.variant] = (parameter_counts(result.workdir)
                              if result.status.state == STATE_DONE else None)
  return {variant: counts[variant]
          for variant in dict.fromkeys(r.variant for r in results)}


# Report files.


def format_fraction(fraction: float) -> str:
  return f"{fraction:g}"


def _format_number(value: float, metric: str) -> str:
  if math.isnan(value):
    return "n/a"
  return f"{100 * value:.2f}" if is_recall(metric) else f"{value:.4g}"


def format_cell(group: GroupSummary, metric: str) -> str:
  """Return "mean ± std (finished/planned)" in the report's units."""
  count = f"({len(group.values)}/{group.planned})"
  if not group.values:
    return f"— {count}"
  if len(group.values) == 1:
    return f"{_format_number(group.mean, metric)} {count}"
  return (f"{_format_number(group.mean, metric)} ± "
          f"{_format_number(group.std, metric)} {count}")


def describe_metric(metric: str) -> str:
  if metric.startswith("mean_"):
    return (f"mean of image→text and text→image "
            f"{metric[len('mean_'):]}")
  return metric


def markdown_report(sweep: Sweep, groups: list[GroupSummary],
                    counts: dict[str, dict[str, int] | None], metric: str,
                    results: list[RunResult], plots: dict[str, str]) -> str:
  """Return the report page: results table, parameter table and plots."""
  fractions = sorted({group.fraction for group in groups})
  variants = list(dict.fromkeys(group.variant for group in groups))
  by_key = {(group.variant, group.fraction): group for group in groups}
  unit = " (%)" if is_recall(metric) else ""
  done = sum(result.status.state == STATE_DONE for result in results)

  lines = [f"# Sweep `{sweep.name}`", ""]
  lines.append(f"Base config `{sweep.base_config}`, sweep file "
               f"`{sweep.spec}`; {done} of {len(results)} runs finished.")
  lines.append("")
  lines.append(f"Test {describe_metric(metric)}{unit}: mean ± sample "
               "standard deviation over seeds; (n/m) counts the finished "
               "runs of the m planned.")
  lines.append("")
  header = ["variant"] + [f"fraction {format_fraction(f)}" for f in fractions]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "---|" * len(header))
  for variant in variants:
    cells = [variant]
    for fraction in fractions:
      group = by_key.get((variant, fraction))
      cells.append(format_cell(group, metric) if group else "")
    lines.append("| " + " | ".join(cells) + " |")
  chances = {group.chance for group in groups if group.chance is not None}
  if chances:
    chance_text = ", ".join(_format_number(c, metric) for c in sorted(chances))
    lines.append("")
    lines.append(f"Chance{unit}: {chance_text}.")

  lines += ["", "## Parameters", ""]
  lines.append("| variant | total | shared blocks | image-only blocks | "
               "text-only blocks | embeddings, norms, projections |")
  lines.append("|---|---|---|---|---|---|")
  for variant, variant_counts in counts.items():
    if variant_counts is None:
      lines.append(f"| {variant} | n/a | | | | |")
      continue
    values = [variant_counts[key] for key in
              ("total", "shared_blocks", "image_blocks", "text_blocks",
               "other")]
    lines.append(f"| {variant} | " + " | ".join(f"{v:,}" for v in values)
                 + " |")

  for title, filename in plots.items():
    lines += ["", f"## {title}", "", f"![{title}]({filename})"]
  return "\n".join(lines) + "\n"


def write_csv(path, sweep: Sweep, groups: list[GroupSummary],
              metric: str) -> None:
  """Write one row per variant and fraction, values in their own units."""
  with epath.Path(path).open("w") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["variant", *sweep.variant_axes, "fraction", "metric",
                     "mean", "std", "num_seeds", "planned_runs", "seeds",
                     "values", "chance"])
    for group in groups:
      writer.writerow([
          group.variant, *group.labels.values(),
          format_fraction(group.fraction), metric,
          "" if not group.values else repr(group.mean),
          "" if math.isnan(group.std) else repr(group.std),
          len(group.values), group.planned, " ".join(group.seeds),
          " ".join(repr(v) for v in group.values),
          "" if group.chance is None else repr(group.chance)])


def write_parameter_csv(path, counts) -> None:
  keys = ("total", "shared_blocks", "image_blocks", "text_blocks", "other")
  with epath.Path(path).open("w") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["variant", *keys])
    for variant, variant_counts in counts.items():
      row = ([variant_counts[key] for key in keys] if variant_counts
             else [""] * len(keys))
      writer.writerow([variant, *row])


def _pyplot():
  try:
    import matplotlib
  except ImportError:
    raise SweepError(
        "Plotting needs matplotlib, which is not installed. Install it with "
        "`.venv/bin/pip install -c constraints.txt matplotlib`.") from None
  matplotlib.use("Agg")  # writes files; needs no display
  import matplotlib.pyplot as plt
  return plt


def axis_label(metric: str, split: str) -> str:
  """Return a short axis label, e.g. "test recall@10, both directions (%)"."""
  if metric.startswith("mean_"):
    label = f"{split} {metric[len('mean_'):]}, both directions"
  else:
    label = f"{split} {metric}"
  return label + (" (%)" if is_recall(metric) else "")


def plot_metric_vs_fraction(path, sweep: Sweep, groups: list[GroupSummary],
                            metric: str) -> bool:
  """Plot the metric against the data fraction, one line per variant.

  Error bars are the sample standard deviation over seeds. Returns False
  (and writes nothing) when no run has finished.
  """
  finished = [group for group in groups if group.values]
  if not finished:
    return False
  plt = _pyplot()
  scale = 100 if is_recall(metric) else 1
  figure, axes = plt.subplots(figsize=(6.4, 4.4))
  for variant in dict.fromkeys(group.variant for group in finished):
    points = [group for group in finished if group.variant == variant]
    axes.errorbar(
        [group.fraction for group in points],
        [scale * group.mean for group in points],
        yerr=[0.0 if math.isnan(group.std) else scale * group.std
              for group in points],
        marker="o", capsize=3, label=variant)
  chances = sorted({group.chance for group in finished
                    if group.chance is not None})
  if len(chances) == 1:
    axes.axhline(scale * chances[0], color="gray", linestyle="--",
                 label="chance")
  fractions = sorted({group.fraction for group in finished})
  axes.set_xscale("log")
  axes.set_xticks(fractions)
  axes.set_xticklabels([format_fraction(f) for f in fractions])
  axes.minorticks_off()
  axes.set_xlabel("fraction of the training split")
  axes.set_ylabel(axis_label(metric, "test"))
  axes.set_title(f"Sweep {sweep.name}: mean ± std over seeds")
  axes.grid(True, alpha=0.3)
  axes.legend(fontsize="small")
  figure.tight_layout()
  with epath.Path(path).open("wb") as f:
    figure.savefig(f, format="png", dpi=120)
  plt.close(figure)
  return True


def validation_curves(results: list[RunResult], metric: str
                      ) -> tuple[float | None, dict[str, dict[int, list]]]:
  """Return the largest fraction and {variant: {step: [value per seed]}}.

  Only finished runs at the grid's largest data fraction count.
  """
  if not results:
    return None, {}
  largest = max(result.fraction for result in results)
  # Imported here so the module does not pull in TensorBoard's writer
  # until a report needs the metrics files.
  from shared_encoder_jax import metric_logging

  curves = {}
  for result in results:
    if result.fraction != largest or result.status.state != STATE_DONE:
      continue
    if not (epath.Path(result.workdir) / "metrics.jsonl").exists():
      logging.warning("%s has no metrics.jsonl; leaving it out of the "
                      "validation curves.", result.workdir)
      continue
    records = metric_logging.read_metrics(result.workdir, "validation")
    curve = curves.setdefault(result.variant, {})
    for step, record in sorted(records.items()):
      value = validation_value(record, metric)
      if value is not None:
        curve.setdefault(step, []).append(value)
  return largest, {variant: curve for variant, curve in curves.items()
                   if curve}


def plot_validation_curves(path, sweep: Sweep, results: list[RunResult],
                           metric: str) -> bool:
  """Plot the validation metric against the step at the largest fraction.

  Each line is the mean over the seeds that have a value at that step; the
  band is the sample standard deviation. Returns False (and writes nothing)
  when no finished run has validation records.
  """
  fraction, curves = validation_curves(results, metric)
  if not curves:
    return False
  plt = _pyplot()
  scale = 100 if is_recall(metric) else 1
  figure, axes = plt.subplots(figsize=(6.4, 4.4))
  for variant, curve in curves.items():
    steps = sorted(curve)
    means, stds = [], []
    for step in steps:
      values = curve[step]
      mean = sum(values) / len(values)
      means.append(scale * mean)
      stds.append(scale * math.sqrt(
          sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                  if len(values) > 1 else 0.0)
    line, = axes.plot(steps, means, marker=".", label=variant)
    axes.fill_between(steps, [m - s for m, s in zip(means, stds)],
                      [m + s for m, s in zip(means, stds)],
                      color=line.get_color(), alpha=0.2)
  axes.set_xlabel("step")
  axes.set_ylabel(axis_label(metric, "validation"))
  axes.set_title(f"Sweep {sweep.name}: data fraction "
                 f"{format_fraction(fraction)}, mean ± std over seeds")
  axes.grid(True, alpha=0.3)
  axes.legend(fontsize="small")
  figure.tight_layout()
  with epath.Path(path).open("wb") as f:
    figure.savefig(f, format="png", dpi=120)
  plt.close(figure)
  return True


@dataclasses.dataclass
class Report:
  """Files written by `write_report` and the numbers behind them."""
  markdown: str
  files: dict[str, str]  # kind -> path
  groups: list[GroupSummary]
  counts: dict[str, dict[str, int] | None]
  results: list[RunResult]


def write_report(sweep: Sweep, root: str, output: str,
                 metric: str = DEFAULT_METRIC) -> Report:
  """Write report.md, results.csv, parameters.csv and the plots to `output`."""
  results = collect_results(sweep, root, metric)
  groups = summarize(sweep, results)
  counts = variant_parameter_counts(results)
  output_dir = epath.Path(output)
  output_dir.mkdir(parents=True, exist_ok=True)

  files = {}
  plots = {}
  path = output_dir / "metric_vs_fraction.png"
  if plot_metric_vs_fraction(path, sweep, groups, metric):
    files["metric_vs_fraction"] = str(path)
    plots["Test metric against data fraction"] = path.name
  path = output_dir / "validation_curves.png"
  if plot_validation_curves(path, sweep, results, metric):
    files["validation_curves"] = str(path)
    plots["Validation curves at the largest fraction"] = path.name

  markdown = markdown_report(sweep, groups, counts, metric, results, plots)
  path = output_dir / "report.md"
  path.write_text(markdown)
  files["markdown"] = str(path)
  path = output_dir / "results.csv"
  write_csv(path, sweep, groups, metric)
  files["csv"] = str(path)
  path = output_dir / "parameters.csv"
  write_parameter_csv(path, counts)
  files["parameters_csv"] = str(path)
  return Report(markdown=markdown, files=files, groups=groups, counts=counts,
                results=results)
