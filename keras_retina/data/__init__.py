"""Datasets: sources (COCO JSON, TFDS, synthetic shapes) and the tf.data pipeline."""
