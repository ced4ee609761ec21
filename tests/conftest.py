"""Test configuration: 8 fake CPU devices and float64, set before JAX initialises.

Gradient checks run in float64 (``jax_enable_x64``); model and training tests pass float32
arrays explicitly where they mean float32.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Exactness tests compare float32 with oracles at tight tolerances: on a GPU/TPU the ops'
# default precision (precision=None) would be TF32 / bf16 passes, so pin "highest" for them.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import pathlib

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
    """``../shared/data`` (real MNIST / Fashion-MNIST .npz); skips cleanly when absent."""
    if not (SHARED_DATA / "mnist.npz").exists():
        pytest.skip("../shared/data is not present (only on the developers' machines and CI)")
    return SHARED_DATA
