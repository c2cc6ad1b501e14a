"""The train-step benchmarks measure the real configs, and the GPU script
runs with only JAX, Flax and optax."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from shared_encoder_jax import config as config_lib
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import step_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setups_match_the_experiment_configs():
  base = config_lib.base_config()
  assert step_benchmark.OPTIMIZER == dict(base.optimizer)
  for name, setup in step_benchmark.SETUPS.items():
    config = config_lib.pmc_oa_experiment(
        "small" if setup["size"] == "small" else "paper")
    assert setup["vocab_size"] == config.tokenizer.vocab_size, name
    for variant, arg in (("shared", "pmc_oa_shared_feature"),
                         ("separate", "pmc_oa_separate")):
      fields = step_benchmark.model_fields(name, variant)
      module = {"shared": {}, "separate": {"shared_layers": "none",
                                           "modality": "none"}}[variant]
      for field, value in fields.items():
        want = module.get(field, config.model[field])
        assert value == pytest.approx(want), (name, arg, field)


@pytest.fixture(scope="module")
def small_step():
  return step_benchmark.build_step(
      "small", "separate", batch_size=16,
      mesh=sharding_lib.make_mesh(devices=jax.devices()[:1]))


def test_analytic_flops_agree_with_xla(small_step):
  analytic = step_benchmark.analytic_flops(small_step.model, 16)["step"]
  xla = step_benchmark.xla_flops(small_step)
  assert xla is not None
  # XLA also counts elementwise work, which the formula leaves out.
  assert 0.9 < analytic / xla <= 1.0
  # On 8 devices each runs an eighth of the batch, so the total is about
  # the same. Replicated work (the optimizer update, the loss) counts 8x.
  eight = step_benchmark.build_step("small", "separate", batch_size=16)
  assert eight.num_devices == 8
  assert 1.0 < step_benchmark.xla_flops(eight) / xla < 1.1


def test_measure_reports_rates_and_a_breakdown(small_step):
  result = step_benchmark.measure(small_step, warmup=1, steps=3,
                                  ceiling=1e12)
  assert result["step_seconds"]["count"] == 3
  assert result["ceiling_fraction"] == pytest.approx(
      result["achieved_flops_per_second"] / 1e12)
  shares = result["breakdown"]["shares"]
  assert sum(shares.values()) == pytest.approx(1.0)
  assert shares["dense"] > 0.2
  assert shares["attention"] > 0
  assert shares["optimizer"] > 0
  assert result["memory"]["compiled_bytes"] > 0


def test_matmul_ceiling_reports_each_shape():
  ceiling = step_benchmark.matmul_ceiling([(64, 64, 64), (128, 64, 32)],
                                          seconds_per_shape=0.01)
  assert set(ceiling["by_shape"]) == {"64x64x64", "128x64x32"}
  assert ceiling["best"] == max(ceiling["by_shape"].values())


BLOCKED = ("tensorflow", "tensorflow_datasets", "grain", "ml_collections",
           "sentencepiece", "torch")


def test_gpu_script_runs_with_only_jax_flax_optax(tmp_path):
  """Imports of everything else fail, as on the accelerator machines."""
  runner = textwrap.dedent(f"""
      import importlib.abc, runpy, sys
      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
          if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked: " + name)
      sys.meta_path.insert(0, Block())
      sys.argv = ["gpu_readiness.py", "--setup", "small", "--batch", "8",
                  "--steps", "1", "--warmup", "1", "--dtype", "float32",
                  "--allow-cpu", "--json", {str(tmp_path / "out.json")!r}]
      runpy.run_path("benchmarks/gpu_readiness.py", run_name="__main__")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = ""
  result = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "MFU" in result.stdout
  assert "shared layers joint" in result.stdout
  assert (tmp_path / "out.json").exists()


def test_gpu_script_refuses_cpu_without_flag():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "benchmarks/gpu_readiness.py", "--setup", "small"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "No accelerator found" in result.stderr
