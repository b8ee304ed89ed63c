"""Test fixtures (TF set-up and two logical CPU devices: ../conftest.py)."""

import keras
import pytest


@pytest.fixture
def restore_dtype_policy():
    """Puts back Keras' global dtype policy after a test that changes it."""
    policy = keras.config.dtype_policy()
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)
