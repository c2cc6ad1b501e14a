"""The accelerator-side modules import without TensorFlow, TFDS or grain."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import shared_encoder_jax.bundle
import shared_encoder_jax.loss
import shared_encoder_jax.model
import shared_encoder_jax.optimizer
import shared_encoder_jax.train_step
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_core_modules_import_without_tensorflow():
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
  assert "jax" in loaded
  for package in ("tensorflow", "tensorflow_datasets", "grain"):
    assert package not in loaded
