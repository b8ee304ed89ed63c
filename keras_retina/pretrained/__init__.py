"""Published checkpoints converted to keras_retina models."""
