"""Writes ``saved_by_0_1_0.keras`` and ``saved_by_0_1_0.npz``: a model file from before a refactor, kept to test that it still loads.

Run once, at keras_retina 0.1.0 (commit c6a7839, the last commit with the flat
package layout), from the repository root:

    python tests/data/make_saved_by_0_1_0.py

The ``.keras`` file is a small compiled and trained RetinaNet (tiny backbone,
a non-default anchor generator, FocalLoss with non-default alpha and gamma,
SGD with the WarmupStepDecay schedule, after one step); the
``.npz`` holds an input batch and that model's raw outputs and detections
for it. ``tests/test_serialization.py`` loads the file with the current
package and checks the outputs are the same. Rerunning this script at a later
version writes a file of that version, not of 0.1.0: keep the committed one.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_retina as kr  # noqa: E402
from keras_retina.training import WarmupStepDecay  # noqa: E402  (0.1.0's path)

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    keras.utils.set_random_seed(7)
    model = kr.RetinaNet(
        num_classes=3,
        backbone="tiny",
        fpn_channels=16,
        head_channels=16,
        num_head_convs=2,
        anchor_generator=kr.AnchorGenerator(size_multiplier=3.0, scales=(1.0, 1.5), aspect_ratios=(0.5, 1.0)),
        score_threshold=0.01,
        max_detections=20,
    )
    schedule = WarmupStepDecay(0.01, milestones=(5, 8), warmup_steps=2)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule),  # no momentum: no slot variables, half the file
        classification_loss=kr.FocalLoss(alpha=0.3, gamma=1.5),
        box_loss="huber",
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 64, 64, 3)).astype("uint8")
    y = {
        "boxes": np.array([[[4, 6, 30, 40], [0, 0, 0, 0]], [[10, 12, 50, 60], [20, 20, 40, 44]]], "float32"),
        "classes": np.array([[1, -1], [0, 2]], "int32"),
    }
    model.fit(images, y, batch_size=2, epochs=1, verbose=0)
    model.save(os.path.join(HERE, "saved_by_0_1_0.keras"))
    raw = model(images)
    detections = model.predict(images, verbose=0)
    np.savez(
        os.path.join(HERE, "saved_by_0_1_0.npz"),
        images=images,
        cls_logits=np.asarray(raw["cls_logits"]),
        box_deltas=np.asarray(raw["box_deltas"]),
        **{f"detections_{k}": np.asarray(v) for k, v in detections.items()},
        optimizer_iterations=np.asarray(model.optimizer.iterations),
    )


if __name__ == "__main__":
    main()
