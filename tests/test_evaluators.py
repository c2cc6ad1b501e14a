"""Evaluators on the small synthetic dataset: oracle embedders, a checkpoint
trained for two steps and its exported bundle."""

import json
import os
import re

import ml_collections
import numpy as np
import pytest

from conftest import SMALL_DATASET
from conftest import tiny_config
from shared_encoder_jax import config as config_lib
from shared_encoder_jax import evaluators
from shared_encoder_jax import export as export_lib
from shared_encoder_jax import train as train_lib
from shared_encoder_jax.cli import evaluate as evaluate_cli
from shared_encoder_jax.data import synthetic_radiology

ALL = ("retrieval", "zero_shot", "linear_probe")
FAST = evaluators.Options(probe_shots=(4, None))


@pytest.fixture(scope="module")
def dataset(synthetic_data_dir):
  data = config_lib.base_config().data
  data.name = SMALL_DATASET
  data.data_dir = synthetic_data_dir
  return evaluators.Dataset.load(data)


def class_of_text(text, names):
  """Index of the (longest) class name in `text`; -1 after the word "no"."""
  found = [i for i, name in enumerate(names) if name in text]
  index = max(found, key=lambda i: len(names[i]))
  return index, -1.0 if re.search(r"\bno\b", text) else 1.0


class OracleEmbedder:
  """Embeds an image as its finding's class, looked up by caption.

  Single-finding examples become one-hot vectors of their class, others a
  fixed vector. Prompts become the one-hot vector of the class they name.
  Texts and images of pair i get the same vector, plus a unique id
  dimension, so retrieval is perfect.
  """

  def __init__(self, dataset):
    self.names = [name.replace("_", " ")
                  for name in synthetic_radiology.FINDING_TYPES]
    self.class_of_caption = {}
    for split in ("train", "validation", "test"):
      source = dataset.source(split)
      for index in range(len(source)):
        example = source[index]
        findings = list(example["findings"])
        self.class_of_caption[example["caption"]] = (
            int(findings[0]) if len(findings) == 1 else -1)
    self.logit_scale, self.logit_bias = 10.0, None

  def _vector(self, caption):
    out = np.zeros(len(self.names) + 1)
    out[self.class_of_caption[caption]] = 1.0
    return out

  def embed_images(self, examples):
    return np.stack([self._vector(examples[i]["caption"])
                     for i in range(len(examples))])

  def embed_pairs(self, examples):
    ids = np.eye(len(examples))
    images = np.concatenate([self.embed_images(examples), ids], axis=1)
    return images, images.copy()

  def embed_texts(self, texts):
    out = np.zeros((len(texts), len(self.names) + 1))
    for row, text in enumerate(texts):
      index, sign = class_of_text(text, self.names)
      out[row, index] = sign
    return out


@pytest.fixture(scope="module")
def oracle(dataset):
  return OracleEmbedder(dataset)


def test_oracle_retrieval_is_perfect(oracle, dataset):
  metrics = evaluators.evaluate("retrieval", oracle, dataset, "test", FAST)
  assert metrics["image_to_text"]["recall@1"] == 1.0
  assert metrics["text_to_image"]["recall@1"] == 1.0
  assert metrics["group_key"] == "group"
  assert metrics["num_groups"] <= metrics["num_pairs"] == 1000
  assert sorted(metrics["chance"]) == ["recall@1", "recall@10",
                                       "recall@200", "recall@5",
                                       "recall@50"]


def test_oracle_zero_shot_is_perfect(oracle, dataset):
  metrics = evaluators.evaluate("zero_shot", oracle, dataset, "test", FAST)
  single = metrics["single_label"]
  assert single["accuracy"] == 1.0
  assert single["macro_f1"] == 1.0
  assert single["num_classes"] == 6
  # The test split has fewer than 200 single-finding images per class.
  assert 0 < max(single["examples_per_class"]) < 200
  assert sum(single["examples_per_class"]) == single["num_examples"]


def test_zero_shot_respects_per_class_limit(oracle, dataset):
  options = evaluators.Options(zero_shot_per_class=3)
  metrics = evaluators.evaluate("zero_shot", oracle, dataset, "test",
                                options)
  assert metrics["single_label"]["examples_per_class"] == [3] * 6


def test_oracle_linear_probe_is_perfect(oracle, dataset):
  metrics = evaluators.evaluate("linear_probe", oracle, dataset, "test",
                                FAST)
  assert metrics["train_split"] == "train"
  assert metrics["validation_split"] == "validation"
  assert metrics["probes"]["full"]["accuracy"] == 1.0
  assert metrics["probes"]["4-shot"]["num_train"] == 4 * 6
  assert metrics["probes"]["4-shot"]["accuracy"] > 0.5


def test_linear_probe_caps_training_examples(oracle, dataset):
  options = evaluators.Options(probe_max_train=60, probe_shots=(None,))
  metrics = evaluators.evaluate("linear_probe", oracle, dataset, "test",
                                options)
  assert metrics["num_train"] == 60


def test_unknown_evaluator_raises(oracle, dataset):
  with pytest.raises(evaluators.EvaluationError, match="'ranking'"):
    evaluators.evaluate("ranking", oracle, dataset, "test")


class ChexpertDataset:
  """In-memory stand-in for a dataset with a `chexpert` feature.

  Each example's "image" is already its embedding: +1 where the label is
  positive, -1 elsewhere, over the CheXpert labels.
  """

  def __init__(self, values):
    self.values = values
    self.name = "chexpert_stand_in"
    self.features = {"image": None, "caption": None, "chexpert": None}
    self.examples_list = [{"image": np.where(row == 1, 1.0, -1.0),
                           "caption": "", "chexpert": row} for row in values]

  def class_names(self, key):
    return None

  def source(self, split):
    return self.examples_list

  def read_feature(self, split, key):
    return [example[key] for example in self.examples_list]

  def examples(self, split, indices=None):
    return self.examples_list


class ChexpertEmbedder:

  def __init__(self, names):
    self.names = [name.lower() for name in names]

  def embed_images(self, examples):
    return np.stack([example["image"] for example in examples])

  def embed_texts(self, texts):
    out = np.zeros((len(texts), len(self.names)))
    for row, text in enumerate(texts):
      index, sign = class_of_text(text, self.names)
      out[row, index] = sign
    return out


def test_chexpert_zero_shot_by_label():
  from shared_encoder_jax.data.builders import mimic_cxr
  names = mimic_cxr.CHEXPERT_LABELS
  rng = np.random.default_rng(0)
  values = rng.choice([1.0, 0.0, -1.0, np.nan], size=(200, len(names)))
  values[:, names.index("Fracture")] = 0.0  # one class only
  metrics = evaluators.EVALUATORS["zero_shot"](
      ChexpertEmbedder(names), ChexpertDataset(values), "test",
      evaluators.Options())
  multi = metrics["multi_label"]
  assert "No Finding" not in multi["per_label"]
  assert multi["excluded_labels"] == ["No Finding"]
  assert multi["skipped_labels"] == ["Fracture"]
  assert multi["per_label"]["Pleural Effusion"]["auroc"] == 1.0
  assert multi["macro_auroc"] == 1.0
  assert multi["num_labels_scored"] == len(names) - 2


def test_zero_shot_without_labels_raises(oracle):
  stand_in = ChexpertDataset(np.zeros((2, 14)))
  stand_in.features = {"image": None, "caption": None}
  with pytest.raises(evaluators.EvaluationError, match="ClassLabel"):
    evaluators.EVALUATORS["zero_shot"](oracle, stand_in, "test",
                                       evaluators.Options())


@pytest.fixture(scope="module")
def trained_workdir(synthetic_data_dir, tmp_path_factory):
  """A workdir trained for two steps with a tiny model."""
  config = tiny_config()
  config.data.data_dir = synthetic_data_dir
  config.total_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  workdir = str(tmp_path_factory.mktemp("evaluators_workdir"))
  train_lib.train_and_evaluate(config, workdir)
  return workdir


def check_ranges(results):
  retrieval = results["retrieval"]["test"]
  for direction in ("image_to_text", "text_to_image"):
    assert 0 <= retrieval[direction]["recall@10"] <= 1
    assert 1 <= retrieval[direction]["median_rank"] <= 1000
  assert np.isfinite(retrieval["loss"])
  single = results["zero_shot"]["test"]["single_label"]
  assert 0 <= single["accuracy"] <= 1
  assert 0 <= single["macro_f1"] <= 1
  for probe in results["linear_probe"]["test"]["probes"].values():
    assert 0 <= probe["balanced_accuracy"] <= 1
    assert probe["c"] in evaluators.Options().c_grid


@pytest.fixture(scope="module")
def checkpoint_results(trained_workdir):
  return evaluate_cli.run_evaluation(
      workdir=trained_workdir, evaluators=ALL, splits=("test",),
      options=FAST)


def test_checkpoint_evaluation_writes_files(trained_workdir,
                                            checkpoint_results):
  check_ranges(checkpoint_results)
  directory = os.path.join(trained_workdir, "evaluation")
  with open(os.path.join(directory, "test_step_2.json")) as f:
    retrieval = json.load(f)
  assert retrieval["split"] == "test"
  assert retrieval["step"] == 2
  # The training config's recall_ks (1, 5, 10, 50, 200), plus the group key.
  assert set(retrieval["image_to_text"]) == {
      "recall@1", "recall@5", "recall@10", "recall@50", "recall@200",
      "median_rank"}
  assert retrieval["group_key"] == "group"
  with open(os.path.join(directory, "zero_shot_test_step_2.json")) as f:
    assert json.load(f)["evaluator"] == "zero_shot"
  with open(os.path.join(directory, "linear_probe_test_step_2.json")) as f:
    assert set(json.load(f)["probes"]) == {"4-shot", "full"}


def test_bundle_evaluation_matches_checkpoint(trained_workdir,
                                              checkpoint_results,
                                              synthetic_data_dir, tmp_path):
  bundle = export_lib.export_bundle(trained_workdir,
                                    str(tmp_path / "bundle"))
  output = str(tmp_path / "results.json")
  from_bundle = evaluate_cli.run_evaluation(
      bundle=bundle, evaluators=ALL, splits=("test",),
      dataset=SMALL_DATASET, data_dir=synthetic_data_dir, output=output,
      options=FAST)
  from_checkpoint = checkpoint_results
  with open(output) as f:
    written = json.load(f)
  assert written["model"]["kind"] == "bundle"
  assert written["dataset"] == SMALL_DATASET
  assert set(written["results"]) == set(ALL)
  assert written["results"]["retrieval"]["test"]["num_pairs"] == 1000
  # A bundle uses the default recall_ks, with 50, which the config lacks.
  assert "recall@50" in from_bundle["retrieval"]["test"]["image_to_text"]
  check_ranges(from_bundle)
  bundle_retrieval = from_bundle["retrieval"]["test"]
  checkpoint_retrieval = from_checkpoint["retrieval"]["test"]
  assert bundle_retrieval["image_to_text"]["median_rank"] == pytest.approx(
      checkpoint_retrieval["image_to_text"]["median_rank"], abs=5)
  assert bundle_retrieval["loss"] == pytest.approx(
      checkpoint_retrieval["loss"], abs=1e-3)
  assert from_bundle["zero_shot"]["test"]["single_label"][
      "num_examples"] == from_checkpoint["zero_shot"]["test"][
          "single_label"]["num_examples"]


def test_bundle_needs_dataset_and_output(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="--dataset"):
    evaluate_cli.run_evaluation(bundle=str(tmp_path))


def test_workdir_and_bundle_exclusive(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="exactly one"):
    evaluate_cli.run_evaluation(workdir=str(tmp_path), bundle=str(tmp_path))


def test_unknown_evaluator_flag_raises(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="'ranking'"):
    evaluate_cli.run_evaluation(workdir=str(tmp_path),
                                evaluators=("ranking",))


def test_probe_shots_flag_rejects_words():
  with pytest.raises(config_lib.ConfigError, match="'many'"):
    evaluate_cli._options(None, 200, 2000, ["1", "many"], "exclude", False)


def test_other_dataset_gets_fresh_builder_config():
  base = config_lib.base_config().data
  base.builder_config.image_dir = "images"
  data = evaluate_cli._data_config(base, "synthetic_radiology/small",
                                   "/data")
  assert data.builder_config.image_dir is None
  assert data.data_dir == "/data"
  assert isinstance(data, ml_collections.ConfigDict)
