"""Zero-shot classification with text prompts as the classifier.

Prompt ensembling (as in CLIP): each class name fills every prompt template,
each prompt embedding is L2-normalised, the class embedding is their mean,
normalised again. An image's class scores are the cosine similarities of its
normalised embedding with the class embeddings.

Single-label: the predicted class is the highest score. Metrics are
accuracy, balanced accuracy (mean per-class recall over the classes present
in the labels) and macro F1 over those classes, with chance = 1 / the number
of classes offered to the classifier.

Multi-label (for example CheXpert labels): each label has a positive and a
negative prompt set ("{}" and "no {}" templates). The score of label l is
sim(image, positive l) - sim(image, negative l). A softmax over the two
similarities times any positive logit scale is a monotone function of this
difference, so it would give the same AUROC. Label values follow CheXpert:
1 positive, 0 negative, -1 uncertain, NaN blank (not mentioned). By default
uncertain and blank values are left out of that label's AUROC. `uncertain`
can instead count them as positive ("ones", U-Ones) or negative ("zeros",
U-Zeros), and `blank_as_negative` counts blanks as negative. A label whose
remaining examples are all of one class has AUROC NaN, is left out of the
macro mean and is listed in `skipped_labels`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

EmbedTexts = Callable[[list[str]], np.ndarray]

RADIOLOGY_TEMPLATES = (
    "{}.",
    "a chest radiograph showing {}.",
    "a chest x-ray with {}.",
    "a radiograph of the chest with a {}.",
    "{} in the lung.",
)
POSITIVE_TEMPLATES = (
    "{}.",
    "a chest radiograph showing {}.",
    "findings consistent with {}.",
)
NEGATIVE_TEMPLATES = (
    "no {}.",
    "a chest radiograph showing no {}.",
    "no evidence of {}.",
)
UNCERTAIN_POLICIES = ("exclude", "ones", "zeros")


def normalize_rows(x: np.ndarray) -> np.ndarray:
  """Scale each row to unit L2 norm, leaving zero rows zero."""
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norms, 1e-12)


def class_embeddings(embed_texts: EmbedTexts, class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """Return one unit vector per class, the normalised mean of its prompts."""
  if not templates:
    raise ValueError("templates is empty; pass at least one template with "
                     "a '{}' for the class name.")
  prompts = [template.format(name) for name in class_names
             for template in templates]
  embeddings = normalize_rows(embed_texts(prompts))
  embeddings = embeddings.reshape(len(class_names), len(templates), -1)
  return normalize_rows(embeddings.mean(axis=1))


def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           num_classes: int) -> dict:
  """Accuracy, balanced accuracy and macro F1, each with its chance rate.

  Balanced accuracy and macro F1 average over the classes present in
  `labels`. Chance is a uniform guess among `num_classes` classes, so its
  balanced accuracy is 1 / num_classes too.
  """
  labels = np.asarray(labels)
  predictions = np.asarray(predictions)
  present = np.unique(labels)
  counts = np.bincount(labels, minlength=num_classes)
  return {
      "num_examples": int(len(labels)),
      "num_classes": int(num_classes),
      "examples_per_class": [int(count) for count in counts],
      "accuracy": float(sk_metrics.accuracy_score(labels, predictions)),
      # Per-class recall over the present classes. sklearn's
      # balanced_accuracy_score warns when predictions name other classes.
      "balanced_accuracy": float(sk_metrics.recall_score(
          labels, predictions, labels=present, average="macro",
          zero_division=0)),
      "macro_f1": float(sk_metrics.f1_score(
          labels, predictions, labels=present, average="macro",
          zero_division=0)),
      "chance": {"accuracy": 1 / num_classes,
                 "balanced_accuracy": 1 / num_classes},
  }


def single_label_zero_shot(embed_texts: EmbedTexts,
                           image_embeddings: np.ndarray,
                           labels: np.ndarray, class_names: Sequence[str],
                           templates: Sequence[str] = RADIOLOGY_TEMPLATES
                           ) -> dict:
  """Classify each image as its most similar class and score the result.

  `labels[i]` is the index into `class_names` of image i's class.
  """
  classes = class_embeddings(embed_texts, class_names, templates)
  scores = normalize_rows(image_embeddings) @ classes.T
  results = classification_metrics(labels, scores.argmax(axis=1),
                                   len(class_names))
  results["class_names"] = list(class_names)
  results["num_templates"] = len(templates)
  return results


def label_scores(embed_texts: EmbedTexts, image_embeddings: np.ndarray,
                 label_names: Sequence[str],
                 positive_templates: Sequence[str] = POSITIVE_TEMPLATES,
                 negative_templates: Sequence[str] = NEGATIVE_TEMPLATES
                 ) -> np.ndarray:
  """Score (images, labels) as positive minus negative prompt similarity."""
  positive = class_embeddings(embed_texts, label_names, positive_templates)
  negative = class_embeddings(embed_texts, label_names, negative_templates)
  images = normalize_rows(image_embeddings)
  return images @ positive.T - images @ negative.T


def binary_targets(values: np.ndarray, uncertain: str = "exclude",
                   blank_as_negative: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Map label values 1/0/-1/NaN to (targets, usable) by the module's policy.

  Returns float targets (1 positive, 0 negative) and a boolean mask of the
  entries that take part in the AUROC.
  """
  if uncertain not in UNCERTAIN_POLICIES:
    raise ValueError(f"uncertain={uncertain!r} is not one of "
                     f"{UNCERTAIN_POLICIES}.")
  values = np.asarray(values, np.float64)
  is_uncertain = values == -1
  is_blank = np.isnan(values)
  usable = (values == 1) | (values == 0)
  unknown = ~(usable | is_uncertain | is_blank)
  if unknown.any():
    raise ValueError(
        "Label values must be 1, 0, -1 or NaN; found "
        f"{sorted(set(values[unknown].tolist()))}.")
  targets = np.where(values == 1, 1.0, 0.0)
  if uncertain == "ones":
    targets[is_uncertain] = 1.0
  if uncertain != "exclude":
    usable |= is_uncertain
  if blank_as_negative:
    usable |= is_blank
  return targets, usable


def multi_label_zero_shot(embed_texts: EmbedTexts,
                          image_embeddings: np.ndarray, labels: np.ndarray,
                          label_names: Sequence[str],
                          positive_templates: Sequence[str] =
                          POSITIVE_TEMPLATES,
                          negative_templates: Sequence[str] =
                          NEGATIVE_TEMPLATES,
                          uncertain: str = "exclude",
                          blank_as_negative: bool = False) -> dict:
  """AUROC per label and their macro mean (see the module docstring).

  `labels` has shape (images, len(label_names)) with values 1, 0, -1, NaN.
  """
  labels = np.asarray(labels, np.float64)
  if labels.shape != (len(image_embeddings), len(label_names)):
    raise ValueError(
        f"labels has shape {labels.shape}; expected (images, labels) = "
        f"({len(image_embeddings)}, {len(label_names)}).")
  scores = label_scores(embed_texts, image_embeddings, label_names,
                        positive_templates, negative_templates)
  per_label, skipped = {}, []
  for index, name in enumerate(label_names):
    targets, usable = binary_targets(labels[:, index], uncertain,
                                     blank_as_negative)
    chosen = targets[usable]
    positives = int(chosen.sum())
    auroc = float("nan")
    if 0 < positives < len(chosen):
      auroc = float(sk_metrics.roc_auc_score(chosen,
                                             scores[usable, index]))
    else:
      skipped.append(name)
    per_label[name] = {"auroc": auroc, "num_positive": positives,
                       "num_negative": int(len(chosen) - positives)}
  scored = [value["auroc"] for value in per_label.values()
            if not np.isnan(value["auroc"])]
  return {
      "num_examples": int(len(labels)),
      "macro_auroc": float(np.mean(scored)) if scored else float("nan"),
      "num_labels_scored": len(scored),
      "skipped_labels": skipped,
      "per_label": per_label,
      "uncertain": uncertain,
      "blank_as_negative": blank_as_negative,
      "chance": {"macro_auroc": 0.5},
  }


def single_label_subset(findings_lists: Iterable[Sequence],
                        class_names: Sequence[str], per_class: int
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Pick examples with exactly one finding, up to `per_class` per class.

  `findings_lists[i]` lists example i's findings as class indices or names.
  The first matching examples in split order are taken, so the subset is
  deterministic. `findings_lists` may be a lazy iterable; reading stops once
  every class has `per_class` examples. Returns (example indices in split
  order, class indices).
  """
  index_of = {name: index for index, name in enumerate(class_names)}
  per_class_count = np.zeros(len(class_names), np.int64)
  indices, labels = [], []
  for example, findings in enumerate(findings_lists):
    if per_class_count.min() >= per_class:
      break
    findings = list(findings)
    if len(findings) != 1:
      continue
    finding = findings[0]
    if isinstance(finding, bytes):
      finding = finding.decode("utf-8")
    if isinstance(finding, str):
      if finding not in index_of:
        raise ValueError(f"Example {example} has finding {finding!r}, which "
                         f"is not one of the class names {list(class_names)}.")
      label = index_of[finding]
    else:
      label = int(finding)
    if not 0 <= label < len(class_names):
      raise ValueError(f"Example {example} has finding {finding!r}, outside "
                       f"the {len(class_names)} class names.")
    if per_class_count[label] < per_class:
      per_class_count[label] += 1
      indices.append(example)
      labels.append(label)
  return np.asarray(indices, np.int64), np.asarray(labels, np.int64)
