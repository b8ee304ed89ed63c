"""Writes torchvision's RetinaNet outputs for the parity test: run in its own process.

``python tests/torchvision_reference.py v1|v2 OUT_DIR`` builds torchvision's
model with seeded random weights (BatchNorm statistics and GroupNorm affine
parameters that are not the identity; moderate logits and small box deltas,
so that detections are ranked), saves its ``state_dict`` with ``torch.save``
as ``OUT_DIR/retinanet.pth``, and its raw head outputs and detections for a
seeded 512x512 image as ``OUT_DIR/reference.npz``. With a third argument
``photo``, the model has torchvision's default transform (shorter side 800,
longer at most 1333) and the reference is its detections on a seeded
640 x 480 image, with the resized and padded sizes.

A separate process because importing torch into a process that has imported
TensorFlow crashes (both bundle their own native libraries).
"""

import sys

import numpy as np
import torch
import torchvision
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_model(version: str, min_size: int = 512, max_size: int = 512):
    torch.manual_seed(0)
    builder = retinanet_resnet50_fpn if version == "v1" else retinanet_resnet50_fpn_v2
    model = builder(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size)
    generator = torch.Generator().manual_seed(1)
    norms = (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d, torch.nn.GroupNorm)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, norms):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                if getattr(module, "running_mean", None) is not None:
                    module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        cls_logits = model.head.classification_head.cls_logits
        bbox_reg = model.head.regression_head.bbox_reg
        cls_logits.bias.copy_(torch.randn(cls_logits.bias.shape, generator=generator))
        probe = model.head(list(model.backbone(torch.zeros(1, 3, 256, 256)).values()))
        cls_logits.weight.mul_(1.5 / probe["cls_logits"].std())
        bbox_reg.weight.mul_(0.2 / probe["bbox_regression"].std())
    return model.eval()


def main(version: str, out_dir: str) -> None:
    torch.set_num_threads(2)
    model = reference_model(version)
    torch.save(model.state_dict(), f"{out_dir}/retinanet.pth")
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        normalized = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        head = model.head(list(model.backbone(normalized[None]).values()))
        detections = model([pixels])[0]
    np.savez(
        f"{out_dir}/reference.npz",
        image=image,
        cls_logits=head["cls_logits"][0].numpy(),
        box_deltas=head["bbox_regression"][0].numpy(),
        boxes=detections["boxes"].numpy(),
        scores=detections["scores"].numpy(),
        labels=detections["labels"].numpy(),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
    )


def photo(version: str, out_dir: str) -> None:
    """torchvision's own detections on a seeded 640 x 480 photo, with its default transform (800, 1333)."""
    torch.set_num_threads(2)
    model = reference_model(version, min_size=800, max_size=1333)
    torch.save(model.state_dict(), f"{out_dir}/retinanet.pth")
    rng = np.random.default_rng(1)
    # Smooth blobs rather than noise, so that boxes of many sizes score.
    image = np.zeros((480, 640, 3), np.float32)
    ys, xs = np.mgrid[0:480, 0:640]
    for _ in range(12):
        cy, cx, r = rng.uniform(0, 480), rng.uniform(0, 640), rng.uniform(20, 160)
        image += rng.uniform(-1, 1, 3) * 90 * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r))[..., None]
    image = np.clip(image + 128 + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        transformed, _ = model.transform([pixels])
        detections = model([pixels])[0]
    np.savez(
        f"{out_dir}/reference.npz",
        image=image,
        resized_size=np.array(transformed.image_sizes[0]),
        canvas_size=np.array(transformed.tensors.shape[-2:]),
        boxes=detections["boxes"].numpy(),
        scores=detections["scores"].numpy(),
        labels=detections["labels"].numpy(),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
    )


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[3] == "photo":
        photo(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
