"""Linear probe: logistic regression on frozen image embeddings.

Features are the image embeddings scaled to unit L2 norm and are not
standardised further: unit norm already puts every example on one scale,
and per-dimension standardisation estimated from a few-shot training set
would be noisy. The classifier is scikit-learn's `LogisticRegression`
(lbfgs solver, multinomial loss for more than two classes, L2 penalty).

Choosing C. Each value of `C_GRID` (1e-3 to 1e3, one per decade) is fit on
the training set and scored by accuracy on the validation set. The best
accuracy wins, and ties go to the smaller C, the stronger regularisation.
The probe with that C is then refit on the training set alone (default) or
on training plus validation (`refit_on_train_and_validation`), and scored
on the test set.

Few-shot: k examples per class drawn from the training set without
replacement with a seeded generator, all of a class when it has fewer.
C is still chosen on the whole validation set.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from absl import logging
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model

from shared_encoder_jax import zero_shot

C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
MAX_ITERATIONS = 1000


def _fit(features, labels, c: float, max_iter: int):
  model = linear_model.LogisticRegression(C=c, solver="lbfgs",
                                          max_iter=max_iter)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", sk_exceptions.ConvergenceWarning)
    model.fit(features, labels)
  if any(issubclass(w.category, sk_exceptions.ConvergenceWarning)
         for w in caught):
    logging.warning("Logistic regression with C=%g did not converge in %d "
                    "iterations; its score may be lower than possible.", c,
                    max_iter)
  return model


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray,
                 validation_features: np.ndarray,
                 validation_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, num_classes: int,
                 c_grid: Sequence[float] = C_GRID,
                 refit_on_train_and_validation: bool = False,
                 max_iter: int = MAX_ITERATIONS) -> dict:
  """Choose C on validation, refit, and score the test set.

  Labels are class indices below `num_classes`. Returns
  `zero_shot.classification_metrics` of the test set plus `c`, the chosen C,
  and `validation_accuracy` for every C tried.
  """
  train_labels = np.asarray(train_labels)
  if len(np.unique(train_labels)) < 2:
    raise ValueError(
        f"The training set has {len(np.unique(train_labels))} class(es); "
        "a linear probe needs examples of at least two classes.")
  train = zero_shot.normalize_rows(train_features)
  validation = zero_shot.normalize_rows(validation_features)
  test = zero_shot.normalize_rows(test_features)

  scores = {}
  for c in sorted(c_grid):
    model = _fit(train, train_labels, c, max_iter)
    scores[c] = float(np.mean(model.predict(validation) == validation_labels))
  best_c = max(sorted(scores), key=lambda c: scores[c])  # first of ties

  if refit_on_train_and_validation:
    model = _fit(np.concatenate([train, validation]),
                 np.concatenate([train_labels, validation_labels]), best_c,
                 max_iter)
  else:
    model = _fit(train, train_labels, best_c, max_iter)
  results = zero_shot.classification_metrics(test_labels,
                                             model.predict(test), num_classes)
  results["c"] = best_c
  results["validation_accuracy"] = {f"{c:g}": value
                                    for c, value in scores.items()}
  results["num_train"] = int(len(train_labels))
  results["refit_on_train_and_validation"] = refit_on_train_and_validation
  return results


def few_shot_indices(labels: np.ndarray, shots: int, seed: int
                     ) -> np.ndarray:
  """Indices of `shots` random examples per class, in ascending order."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if len(members) > shots:
      members = rng.choice(members, shots, replace=False)
    chosen.append(members)
  return np.sort(np.concatenate(chosen))


def few_shot_probes(train_features: np.ndarray, train_labels: np.ndarray,
                    validation_features: np.ndarray,
                    validation_labels: np.ndarray, test_features: np.ndarray,
                    test_labels: np.ndarray, num_classes: int,
                    shots: Sequence[int | None] = (1, 4, 16, None),
                    seed: int = 0, **probe_options) -> dict:
  """Run `linear_probe` on k-shot training subsets; None is all of them.

  Returns {"1-shot": ..., "4-shot": ..., "full": ...}. `probe_options` go to
  `linear_probe`.
  """
  results = {}
  for k in shots:
    if k is None:
      indices, name = np.arange(len(train_labels)), "full"
    else:
      indices, name = few_shot_indices(train_labels, k, seed), f"{k}-shot"
    results[name] = linear_probe(
        np.asarray(train_features)[indices],
        np.asarray(train_labels)[indices], validation_features,
        validation_labels, test_features, test_labels, num_classes,
        **probe_options)
  return results
