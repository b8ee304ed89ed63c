"""Test fixtures (TF set-up and two logical CPU devices: ../conftest.py) and the Hypothesis profiles."""

import os

import keras
import pytest
from hypothesis import HealthCheck, settings

# Property-based tests (tests/test_properties_*.py): "ci" (the default) is reproducible, derandomized, with a
# bounded number of examples per property; "dev" searches longer: HYPOTHESIS_PROFILE=dev pytest ...
settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def restore_dtype_policy():
    """Puts back Keras' global dtype policy after a test that changes it."""
    policy = keras.config.dtype_policy()
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)
