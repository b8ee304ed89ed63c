"""RetinaNet (Lin et al. 2017) as a subclassed ``keras.Model``."""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf
from keras import ops

from keras_retina import compat
from keras_retina.model import boxes as box_ops
from keras_retina.model import matching, postprocess
from keras_retina.model.anchors import AnchorGenerator, anchors_in_graph
from keras_retina.model.backbones import build_backbone, fold_batchnorm, preprocessor
from keras_retina.model.fpn import FeaturePyramid
from keras_retina.model.heads import GROUP_NORM_EPSILON, PRIOR_PROBABILITY, BoxHead, ClassificationHead
from keras_retina.model.losses import FocalLoss, get_box_loss, hard_example_weights


@keras.saving.register_keras_serializable(package="keras_retina")
class RetinaNet(compat.MultiWorkerFitFixes, keras.Model):
    """One-stage detector: backbone → FPN P3–P7 → shared class and box subnets.

    Inputs are RGB images, uint8 or float in [0, 255], ``(B, H, W, 3)`` with
    a static ``H, W`` (pad to a fixed size; multiples of 128 avoid odd-sized
    levels). The backbone's own normalisation is applied inside the model.

    * ``model(images)`` returns raw outputs ``{"cls_logits": (B, A, C),
      "box_deltas": (B, A, 4)}``, ``A`` anchors in :class:`AnchorGenerator`
      order.
    * ``model.fit(dataset)`` takes ``(images, {"boxes": (B, N, 4),
      "classes": (B, N)})`` (optional ``"is_crowd": (B, N)``), boxes in
      pixels in ``bounding_box_format``, padding rows with class -1; anchors
      are matched inside the train step (:meth:`compute_loss`).
    * ``model.predict(images)`` returns final detections ``{"boxes": (B, D, 4)
      xyxy pixels, "scores": (B, D), "classes": (B, D), "num_detections":
      (B,)}`` with ``D = max_detections``; :meth:`detect_function` does the
      same on this device only.

    The stages are one method each, as in detectron2's ``DenseDetector``:
    :meth:`label_anchors` → :meth:`loss_terms` → :meth:`update_metrics`
    (called by :meth:`compute_loss`) for training, :meth:`detect` for
    inference.

    The four inference settings live in one frozen
    :class:`keras_retina.model.postprocess.InferenceSettings`,
    ``model.inference_settings``; ``model.score_threshold``,
    ``model.pre_nms_topk``, ``model.nms_iou_threshold`` and
    ``model.max_detections`` read it, and setting any of them (or
    ``model.inference_settings`` itself) validates the value and takes effect
    at the next ``predict``, ``detect`` or :meth:`detect_function` call.
    The box deltas are encoded (matching) and decoded (inference) by one
    :class:`keras_retina.model.boxes.BoxCoder`, ``model.box_coder``, built from
    ``box_weights``.

    Args:
        num_classes: C object classes (no background class).
        backbone: a name from :data:`keras_retina.model.backbones.BACKBONES`.
        backbone_weights: ``"imagenet"``, ``None`` or a weights file path.
        freeze_at: stages frozen from the stem (see :func:`build_backbone`);
            ``None`` means 2 (Detectron) with pretrained weights and 0 from
            scratch, where frozen random weights would be useless.
        freeze_batchnorm: ``None`` means frozen BatchNorm (the paper) with
            pretrained weights and trainable BatchNorm from scratch.
        sync_batchnorm: BatchNorm that trains normalises with the mean and
            variance of the global batch, all-reduced over the replicas
            (Keras' ``BatchNormalization(synchronized=True)``), as
            detectron2, torchvision's v2 recipe and Model Garden do at a few
            images per GPU. ``None`` (default): on when the model is built
            under a strategy with more than one replica, off on one device
            (where it changes only rounding). ``True`` forces it, on one
            device too (Keras' one-pass E[x^2] - E[x]^2 statistics, as the
            replicas compute them). Frozen (and folded) BatchNorm is
            never affected.
        fpn_channels: channels of P3–P7 (256).
        head_channels, num_head_convs: subnet width and depth (256, 4).
        use_group_norm: GroupNorm(32) after each subnet conv (not in the paper;
            torchvision's v2 RetinaNet has it).
        group_norm_epsilon: that GroupNorm's epsilon (Keras' 1e-3;
            torchvision's weights need 1e-5).
        p6_from: ``"c5"`` (paper) or ``"p5"`` (torchvision's v1 RetinaNet).
        fpn_padding: ``"same"`` (Keras) or ``"symmetric"`` (PyTorch's) padding
            of the stride-2 convs of P6 and P7; see :class:`FeaturePyramid`.
        max_level: top pyramid level (7).
        anchor_generator: an :class:`AnchorGenerator` (default: the paper's
            9 anchors on P3–``max_level``).
        prior_probability: initial foreground probability π (0.01).
        bounding_box_format: format of the training boxes (``"xyxy"``);
            predictions are always ``xyxy``.
        foreground_iou, background_iou, allow_low_quality_matches: matching,
            see :func:`keras_retina.model.matching.assign_targets`.
        box_weights: ``(wx, wy, ww, wh)`` delta weights of the
            :class:`keras_retina.model.boxes.BoxCoder`.
        score_threshold, pre_nms_topk, nms_iou_threshold, max_detections,
        class_agnostic_nms, soft_nms_sigma:
            inference, see :class:`keras_retina.model.postprocess.InferenceSettings`.
        fold_batchnorm: when the backbone's BatchNorms use their moving
            statistics (inference, or training with frozen BatchNorm), run a
            twin of the backbone with each BatchNorm folded into its conv
            (:func:`keras_retina.model.backbones.fold_batchnorm`; same weights,
            same outputs within float32 rounding, faster). Default ``True``.
        ohem_batch_size: ``None`` (default: every anchor in the
            classification loss, the paper's focal loss) or online hard
            example mining, the paper's Table 1d baseline: per image only the
            ``ohem_batch_size`` highest-loss anchors (128 or 256) count in
            the classification loss
            (:func:`keras_retina.model.losses.hard_example_weights`; the paper
            pairs it with plain CE: ``FocalLoss(alpha=None, gamma=0)``). The
            box loss and the normaliser (foreground anchors) are unchanged.
        ohem_positive_fraction: with ``ohem_batch_size``: ``None`` (no
            ratio) or the most foreground share (0.25: the paper's 1:3).

    Example:
        A tiny model on two 64 × 64 images: raw outputs for its 774 anchors
        (64 + 16 + 4 + 1 + 1 positions on P3–P7, 9 anchors each), then
        detections, padded to ``max_detections`` (an untrained model scores
        every anchor near π = 0.01, below ``score_threshold``: it keeps none).
        Training is ``model.compile(optimizer=...)`` then
        ``model.fit(dataset)`` on batches as above (README.md runs one).

        >>> model = RetinaNet(num_classes=3, backbone="tiny", fpn_channels=16,
        ...                   head_channels=16, num_head_convs=1)
        >>> images = np.zeros((2, 64, 64, 3), "uint8")
        >>> {name: tuple(x.shape) for name, x in model(images).items()}
        {'cls_logits': (2, 774, 3), 'box_deltas': (2, 774, 4)}
        >>> detections = model.predict(images, verbose=0)
        >>> {name: x.shape for name, x in detections.items()}
        {'boxes': (2, 100, 4), 'scores': (2, 100), 'classes': (2, 100), 'num_detections': (2,)}
        >>> detections["num_detections"]
        array([0, 0], dtype=int32)
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        freeze_at: int | None = None,
        freeze_batchnorm: bool | None = None,
        sync_batchnorm: bool | None = None,
        fpn_channels: int = 256,
        head_channels: int = 256,
        num_head_convs: int = 4,
        use_group_norm: bool = False,
        group_norm_epsilon: float = GROUP_NORM_EPSILON,
        p6_from: str = "c5",
        fpn_padding: str = "same",
        max_level: int = 7,
        anchor_generator: AnchorGenerator | None = None,
        prior_probability: float = PRIOR_PROBABILITY,
        bounding_box_format: str = "xyxy",
        foreground_iou: float = 0.5,
        background_iou: float = 0.4,
        allow_low_quality_matches: bool = True,
        box_weights: Sequence[float] = box_ops.DEFAULT_BOX_WEIGHTS,
        score_threshold: float = 0.05,
        pre_nms_topk: int = 1000,
        nms_iou_threshold: float = 0.5,
        max_detections: int = 100,
        class_agnostic_nms: bool = False,
        soft_nms_sigma: float = 0.0,
        fold_batchnorm: bool = True,
        ohem_batch_size: int | None = None,
        ohem_positive_fraction: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if ohem_batch_size is not None and (int(ohem_batch_size) != ohem_batch_size or ohem_batch_size < 1):
            raise ValueError(f"`ohem_batch_size` must be None or an int >= 1, got {ohem_batch_size!r}.")
        if ohem_positive_fraction is not None and (
            ohem_batch_size is None or not 0.0 < ohem_positive_fraction < 1.0
        ):
            raise ValueError(
                "`ohem_positive_fraction` must be None or in (0, 1), with `ohem_batch_size` set; got "
                f"ohem_positive_fraction={ohem_positive_fraction!r}, ohem_batch_size={ohem_batch_size!r}."
            )
        if isinstance(anchor_generator, dict):
            anchor_generator = keras.saving.deserialize_keras_object(anchor_generator)
        if anchor_generator is None:
            anchor_generator = AnchorGenerator(min_level=3, max_level=max_level)
        if anchor_generator.min_level != 3 or anchor_generator.max_level != max_level:
            raise ValueError(
                f"`anchor_generator` must cover levels 3..{max_level} (`max_level`), got levels "
                f"{anchor_generator.min_level}..{anchor_generator.max_level}."
            )
        pretrained = backbone_weights is not None
        # === config ===
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.freeze_at = freeze_at
        self.freeze_batchnorm = freeze_batchnorm
        self.sync_batchnorm = sync_batchnorm
        self.fpn_channels = int(fpn_channels)
        self.head_channels = int(head_channels)
        self.num_head_convs = int(num_head_convs)
        self.use_group_norm = bool(use_group_norm)
        self.group_norm_epsilon = float(group_norm_epsilon)
        self.p6_from = p6_from
        self.fpn_padding = fpn_padding
        self.max_level = int(max_level)
        self.anchor_generator = anchor_generator
        self.prior_probability = float(prior_probability)
        self.bounding_box_format = bounding_box_format
        self.foreground_iou = float(foreground_iou)
        self.background_iou = float(background_iou)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        # One coder encodes the box targets (matching) and decodes the
        # predictions (inference); box_weights is read back from it.
        self.box_coder = box_ops.BoxCoder(box_weights)
        # The cached detect_function(), in a plain holder so that Keras
        # neither tracks nor saves it; dropped when a setting changes.
        self._detect_cache = _Untracked()
        self.inference_settings = postprocess.InferenceSettings(
            score_threshold=score_threshold,
            pre_nms_topk=pre_nms_topk,
            nms_iou_threshold=nms_iou_threshold,
            max_detections=max_detections,
            class_agnostic_nms=class_agnostic_nms,
            soft_nms_sigma=soft_nms_sigma,
        )
        self.fold_batchnorm = bool(fold_batchnorm)
        self.ohem_batch_size = None if ohem_batch_size is None else int(ohem_batch_size)
        self.ohem_positive_fraction = None if ohem_positive_fraction is None else float(ohem_positive_fraction)

        # === layers ===
        self.backbone = build_backbone(
            backbone,
            weights=backbone_weights,
            freeze_at=(2 if pretrained else 0) if freeze_at is None else freeze_at,
            freeze_batchnorm=pretrained if freeze_batchnorm is None else freeze_batchnorm,
        )
        synchronize = _num_replicas() > 1 if sync_batchnorm is None else bool(sync_batchnorm)
        if synchronize:
            for layer in self.backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
                    layer.synchronized = True  # read by BatchNormalization.call (Keras 3.15)
        self._preprocess = preprocessor(backbone)
        # The BatchNorm-folded twin shares the backbone's variables; kept out
        # of Keras' tracking (a plain object) so it is never saved twice.
        self._folded = _Untracked()
        self.feature_pyramid = FeaturePyramid(
            channels=fpn_channels,
            max_level=max_level,
            p6_from=p6_from,
            padding=fpn_padding,
            name="feature_pyramid",
        )
        num_anchors = anchor_generator.num_anchors_per_location
        self.classification_head = ClassificationHead(
            num_classes=num_classes,
            num_anchors=num_anchors,
            num_convs=num_head_convs,
            channels=head_channels,
            use_group_norm=use_group_norm,
            group_norm_epsilon=group_norm_epsilon,
            prior_probability=prior_probability,
            name="classification_head",
        )
        self.box_head = BoxHead(
            num_anchors=num_anchors,
            num_convs=num_head_convs,
            channels=head_channels,
            use_group_norm=use_group_norm,
            group_norm_epsilon=group_norm_epsilon,
            name="box_head",
        )
        # === losses and metrics (set again by compile) ===
        self.classification_loss = FocalLoss()
        self.box_loss = get_box_loss("smooth_l1")
        self.box_loss_weight = 1.0
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="box_loss")
        self.num_positives_tracker = keras.metrics.Mean(name="num_positives")
        # Boxes the input pipeline dropped (empty after clipping) or cut
        # (beyond max_boxes), when its batches carry the counts: per epoch.
        self.dropped_boxes_tracker = keras.metrics.Sum(name="dropped_boxes")
        self.truncated_boxes_tracker = keras.metrics.Sum(name="truncated_boxes")

    # ------------------------------------------------------------------ graph
    def build(self, input_shape):
        feature_shapes = self.backbone.compute_output_shape(input_shape)
        self.feature_pyramid.build(feature_shapes)
        pyramid_shapes = self.feature_pyramid.compute_output_shape(feature_shapes)
        self.classification_head.build(pyramid_shapes)
        self.box_head.build(pyramid_shapes)
        self.built = True

    def call(self, images, training=None):
        """Maps images ``(B, H, W, 3)`` in [0, 255] to raw head outputs.

        Returns:
            ``{"cls_logits": (B, A, C), "box_deltas": (B, A, 4)}``.
        """
        x = self._preprocess(ops.cast(images, "float32"))
        x = ops.cast(x, self.compute_dtype)
        features = self._backbone_for(training)(x, training=training)
        pyramid = self.feature_pyramid(features)
        return {
            "cls_logits": self.classification_head(pyramid),
            "box_deltas": self.box_head(pyramid),
        }

    def _backbone_for(self, training):
        """The backbone, or its BatchNorm-folded twin when no BatchNorm uses batch statistics."""
        if not self.fold_batchnorm:
            return self.backbone
        batch_statistics = bool(training) and any(
            layer.trainable
            for layer in self.backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)
        )
        if batch_statistics:
            return self.backbone
        if not hasattr(self._folded, "model"):
            self._folded.model = fold_batchnorm(self.backbone)
        return self._folded.model or self.backbone

    def anchors(self, image_shape: Sequence[int]):
        """Anchors ``(A, 4)`` float32 xyxy pixels for inputs of ``image_shape = (H, W)``.

        Example:
            >>> RetinaNet(num_classes=3, backbone="tiny").anchors((512, 512)).shape
            (49104, 4)
        """
        return self.anchor_generator(image_shape)

    # --------------------------------------------------------------- training
    def compile(
        self,
        optimizer="sgd",
        classification_loss: keras.losses.Loss | None = None,
        box_loss="smooth_l1",
        box_loss_weight: float = 1.0,
        **kwargs,
    ):
        """Configures training; the losses default to the paper's.

        Args:
            optimizer: any Keras optimizer or its name.
            classification_loss: a ``keras.losses.Loss`` whose ``call`` maps
                one-hot ``(B, A, C)`` targets and logits to ``(B, A)``
                (default :class:`FocalLoss` with α = 0.25, γ = 2).
            box_loss: ``"smooth_l1"`` (β = 0.11), ``"huber"``, ``"l1"`` or a
                loss instance mapping ``(B, A, 4)`` deltas to ``(B, A)``.
            box_loss_weight: multiplier of the box loss (1).
            **kwargs: passed to ``keras.Model.compile`` (``jit_compile``,
                ``steps_per_execution``, ...). ``loss`` is not accepted: the
                loss is defined by the two arguments above.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "`loss` must be None (pass `classification_loss` and `box_loss` instead), "
                f"got {kwargs['loss']!r}."
            )
        kwargs.pop("loss", None)
        if isinstance(classification_loss, dict):
            classification_loss = keras.losses.deserialize(classification_loss)
        if isinstance(box_loss, dict):
            box_loss = keras.losses.deserialize(box_loss)
        self.classification_loss = classification_loss or FocalLoss()
        self.box_loss = get_box_loss(box_loss)
        self.box_loss_weight = float(box_loss_weight)
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None:
            config.update(
                classification_loss=keras.losses.serialize(self.classification_loss),
                box_loss=keras.losses.serialize(self.box_loss),
                box_loss_weight=self.box_loss_weight,
            )
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Focal loss + box loss, each summed and divided by the global foreground count.

        Three stages: :meth:`label_anchors` matches the anchors to ``y``,
        :meth:`loss_terms` computes the two losses, :meth:`update_metrics`
        logs them. The normaliser is the number of foreground anchors over
        the whole global batch (all replicas, at least 1; weighted by
        ``sample_weight`` when given); each replica returns its share, so
        that the sum over replicas — what ``tf.distribute`` all-reduces — is
        the global loss. Regularisers and ``add_loss`` terms are added.

        Args:
            x: images ``(B, H, W, 3)``, static ``H, W``.
            y: ``{"boxes": (B, N, 4), "classes": (B, N)}`` and optionally
                ``"is_crowd": (B, N)``; padding rows have class -1.
            y_pred: the output of :meth:`call`.
            sample_weight: optional ``(B,)`` per-image weights.

        Returns:
            scalar float32 loss.
        """
        targets = self.label_anchors(tuple(x.shape[1:3]), y)
        cls_loss, box_loss, num_positives = self.loss_terms(targets, y_pred, sample_weight)
        self.update_metrics(cls_loss, box_loss, num_positives, y)
        loss = cls_loss + box_loss
        for extra in self.losses:  # regularisers, add_loss()
            loss = loss + compat.additional_loss(self, extra)
        return loss

    def label_anchors(self, image_shape: Sequence[int], y: dict) -> dict:
        """Matches the anchors of an ``(H, W)`` input to the ground truth ``y``.

        Boxes in ``bounding_box_format`` are converted to ``xyxy`` first; the
        rules are those of :func:`keras_retina.model.matching.assign_targets`, the
        box targets encoded by ``self.box_coder``.

        Args:
            image_shape: ``(H, W)`` of the input images, pixels.
            y: ``{"boxes": (B, N, 4), "classes": (B, N)}`` and optionally
                ``"is_crowd": (B, N)``; padding rows have class -1.

        Returns:
            the targets of :func:`keras_retina.model.matching.assign_targets`:
            ``"cls_targets"`` int32 ``(B, A)``, ``"box_targets"`` float32
            ``(B, A, 4)``, ``"foreground"`` bool ``(B, A)``,
            ``"cls_weights"`` float32 ``(B, A)``.

        Example:
            >>> model = RetinaNet(num_classes=3, backbone="tiny")
            >>> targets = model.label_anchors(
            ...     (64, 64), {"boxes": [[[8., 8., 40., 40.]]], "classes": [[2]]})
            >>> targets["cls_targets"].shape, int(ops.sum(ops.cast(targets["foreground"], "int32")))
            (TensorShape([1, 774]), 16)
        """
        if not isinstance(y, dict) or "boxes" not in y or "classes" not in y:
            raise ValueError(
                "`y` must be a dict {'boxes': (B, N, 4), 'classes': (B, N)}, "
                f"got {type(y).__name__}"
                + (f" with keys {sorted(y)}" if isinstance(y, dict) else "")
                + "."
            )
        image_shape = tuple(image_shape)
        gt_boxes = ops.cast(y["boxes"], "float32")  # (B, N, 4)
        if self.bounding_box_format != "xyxy":
            gt_boxes = box_ops.convert_format(
                gt_boxes, self.bounding_box_format, "xyxy", image_shape=image_shape
            )
        return matching.assign_targets(
            self.anchors(image_shape),
            gt_boxes,
            y["classes"],
            y.get("is_crowd"),
            foreground_iou=self.foreground_iou,
            background_iou=self.background_iou,
            allow_low_quality_matches=self.allow_low_quality_matches,
            box_coder=self.box_coder,
        )

    def loss_terms(self, targets: dict, y_pred: dict, sample_weight=None) -> tuple:
        """The classification and box losses of one replica's batch.

        (Not ``losses``: that is Keras' list of regularisation terms.)

        Args:
            targets: the output of :meth:`label_anchors`, ``(B, A)`` and
                ``(B, A, 4)`` tensors.
            y_pred: ``{"cls_logits": (B, A, C), "box_deltas": (B, A, 4)}``
                from :meth:`call`.
            sample_weight: optional ``(B,)`` per-image weights; an image of
                weight 0 counts as absent, in the losses and the normaliser.

        Returns:
            ``(cls_loss, box_loss, num_positives)``, float32 scalars: this
            replica's shares of the two losses (summed over anchors and
            classes, divided by the global normaliser; ``box_loss`` already
            multiplied by ``box_loss_weight``) and the (weighted) number of
            foreground anchors over all replicas.
        """
        foreground = ops.cast(targets["foreground"], "float32")  # (B, A)
        cls_weights = targets["cls_weights"]  # (B, A)
        if sample_weight is not None:
            per_image = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))  # (B, 1)
            foreground_weighted = foreground * per_image
            cls_weights = cls_weights * per_image
        else:
            foreground_weighted = foreground

        cls_one_hot = ops.one_hot(ops.maximum(targets["cls_targets"], 0), self.num_classes)  # (B, A, C)
        cls_one_hot = cls_one_hot * ops.expand_dims(foreground, -1)  # background rows all 0
        cls_per_anchor = self.classification_loss.call(cls_one_hot, y_pred["cls_logits"])  # (B, A)
        if self.ohem_batch_size is not None:  # OHEM: only each image's hardest anchors
            cls_weights = hard_example_weights(
                cls_per_anchor, cls_weights, targets["foreground"], self.ohem_batch_size, self.ohem_positive_fraction
            )
        box_per_anchor = self.box_loss.call(targets["box_targets"], y_pred["box_deltas"])  # (B, A)
        cls_sum = ops.sum(ops.cast(cls_per_anchor, "float32") * cls_weights)
        box_sum = ops.sum(ops.cast(box_per_anchor, "float32") * foreground_weighted)

        # Weighted like the losses: an image of weight 0 counts as absent.
        local_positives = ops.sum(foreground_weighted)
        global_positives = _sum_over_replicas(local_positives)
        normalizer = ops.maximum(global_positives, 1.0)
        cls_loss = cls_sum / normalizer
        box_loss = self.box_loss_weight * box_sum / normalizer
        return cls_loss, box_loss, global_positives

    def update_metrics(self, cls_loss, box_loss, num_positives, y: dict) -> None:
        """Logs the loss terms, the positives and the pipeline's box counts.

        Batches from :func:`keras_retina.data.make_pipeline` also carry the
        boxes it dropped or truncated (``"num_dropped_boxes"``,
        ``"num_truncated_boxes"``: ``(B,)``); their per-epoch sums are logged
        as ``dropped_boxes`` and ``truncated_boxes``.

        Args:
            cls_loss, box_loss, num_positives: scalars from :meth:`loss_terms`.
            y: the batch's targets.
        """
        # Trackers average over replicas; scaling by the replica count makes
        # them report the global (summed) loss.
        replicas = float(_num_replicas())
        self.cls_loss_tracker.update_state(cls_loss * replicas)
        self.box_loss_tracker.update_state(box_loss * replicas)
        self.num_positives_tracker.update_state(num_positives)
        if "num_dropped_boxes" in y:
            self.dropped_boxes_tracker.update_state(ops.sum(ops.cast(y["num_dropped_boxes"], "float32")))
        if "num_truncated_boxes" in y:
            self.truncated_boxes_tracker.update_state(ops.sum(ops.cast(y["num_truncated_boxes"], "float32")))

    # -------------------------------------------------------------- inference
    def predict_step(self, data):
        """Runs the model and :func:`postprocess.decode_detections` on one batch."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.detect(x)

    def detect(self, images, valid_shapes=None) -> dict:
        """Final detections for images ``(B, H, W, 3)``; ``H, W`` may be known only when a traced graph runs.

        Unlike :meth:`predict`, this runs in the caller's graph or eagerly
        (the SavedModel export calls it inside its serving function); the
        settings are ``self.inference_settings`` at the time it is called
        (traced).

        Args:
            images: ``(B, H, W, 3)`` pixels in [0, 255].
            valid_shapes: optional ``(B, 2)`` ``(height, width)`` of each
                image within a padded canvas: boxes are clipped to it before
                NMS, as torchvision clips to each resized image (None: to the
                whole input).

        Returns:
            ``{"boxes": (B, D, 4) float32 xyxy pixels of the input,
            "scores": (B, D) float32, "classes": (B, D) int32 (-1 past
            num_detections), "num_detections": (B,) int32}``,
            ``D = max_detections``.

        Example:
            >>> model = RetinaNet(num_classes=3, backbone="tiny", max_detections=5)
            >>> model.detect(np.zeros((1, 64, 64, 3), "uint8"))["boxes"].shape
            TensorShape([1, 5, 4])
        """
        outputs = self(images, training=False)
        image_shape = tuple(images.shape[1:3])
        clip_shape = None
        if valid_shapes is not None:  # (B, 2): each image's own extent on a padded canvas
            valid_shapes = tf.cast(valid_shapes, tf.float32)
            clip_shape = (valid_shapes[:, 0:1], valid_shapes[:, 1:2])  # (B, 1) each: broadcast over candidates
        if None in image_shape:  # traced for any size (a serving graph): anchors built when it runs
            image_shape = (tf.shape(images)[1], tf.shape(images)[2])
            anchors, anchors_per_level = anchors_in_graph(self.anchor_generator, *image_shape)
        else:
            anchors, anchors_per_level = self.anchors(image_shape), self.anchor_generator.anchors_per_level(image_shape)
        return postprocess.decode_detections(
            outputs["cls_logits"],
            outputs["box_deltas"],
            anchors,
            anchors_per_level,
            image_shape if clip_shape is None else clip_shape,
            **self.inference_settings.as_dict(),
            box_coder=self.box_coder,
        )

    def detect_function(self):
        """:meth:`detect` as a cached ``tf.function`` that runs on this device only.

        Not ``predict_on_batch``: under MultiWorkerMirroredStrategy that is a
        collective call whose result concatenates every worker's batch,
        while evaluation on each worker runs its own local dataset. The
        function is kept out of Keras' tracking (never saved) and rebuilt
        after any change of the inference settings.

        Returns:
            a callable mapping images ``(B, H, W, 3)`` to the dict of
            :meth:`detect`.

        Example:
            >>> model = RetinaNet(num_classes=3, backbone="tiny", max_detections=5)
            >>> detect = model.detect_function()
            >>> detect(np.zeros((2, 64, 64, 3), "uint8"))["classes"].shape
            TensorShape([2, 5])
            >>> model.detect_function() is detect
            True
            >>> model.max_detections = 2
            >>> model.detect_function()(np.zeros((2, 64, 64, 3), "uint8"))["classes"].shape
            TensorShape([2, 2])
        """
        function = getattr(self._detect_cache, "function", None)
        if function is None:
            function = tf.function(self.detect, reduce_retracing=True)
            self._detect_cache.function = function
        return function

    # The settings in one frozen object; each setter replaces it.
    @property
    def inference_settings(self) -> postprocess.InferenceSettings:
        """The :class:`keras_retina.model.postprocess.InferenceSettings` of :meth:`detect` and ``predict``.

        Setting it (or one of the four properties that read it) drops the
        cached predict and detect functions, so the next call uses the new
        values.

        Example:
            >>> model = RetinaNet(num_classes=3, backbone="tiny")
            >>> model.score_threshold = 0.3
            >>> model.inference_settings
            InferenceSettings(score_threshold=0.3, pre_nms_topk=1000, nms_iou_threshold=0.5, max_detections=100, class_agnostic_nms=False, soft_nms_sigma=0.0)
            >>> model.max_detections = 0
            Traceback (most recent call last):
            ...
            ValueError: `max_detections` must be an integer >= 1, got 0.
        """
        return self._inference_settings

    @inference_settings.setter
    def inference_settings(self, settings: postprocess.InferenceSettings):
        if not isinstance(settings, postprocess.InferenceSettings):
            raise ValueError(
                "`inference_settings` must be a keras_retina.model.postprocess.InferenceSettings, "
                f"got {settings!r}."
            )
        self._inference_settings = settings
        # Keras caches the traced predict function, and a tf.function captures
        # the settings as constants: both are rebuilt at their next use.
        self.predict_function = None
        self._detect_cache.function = None

    @property
    def score_threshold(self) -> float:
        """Candidates scoring at or below it are dropped (see :attr:`inference_settings`)."""
        return self.inference_settings.score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float):
        self.inference_settings = self.inference_settings.replace(score_threshold=value)

    @property
    def pre_nms_topk(self) -> int:
        """(anchor, class) pairs kept per level before NMS (see :attr:`inference_settings`)."""
        return self.inference_settings.pre_nms_topk

    @pre_nms_topk.setter
    def pre_nms_topk(self, value: int):
        self.inference_settings = self.inference_settings.replace(pre_nms_topk=value)

    @property
    def nms_iou_threshold(self) -> float:
        """IoU above which NMS suppresses a box of the same class (see :attr:`inference_settings`)."""
        return self.inference_settings.nms_iou_threshold

    @nms_iou_threshold.setter
    def nms_iou_threshold(self, value: float):
        self.inference_settings = self.inference_settings.replace(nms_iou_threshold=value)

    @property
    def max_detections(self) -> int:
        """Detections per image, ``D`` (see :attr:`inference_settings`)."""
        return self.inference_settings.max_detections

    @max_detections.setter
    def max_detections(self, value: int):
        self.inference_settings = self.inference_settings.replace(max_detections=value)

    @property
    def class_agnostic_nms(self) -> bool:
        """NMS across classes, not only within each (see :attr:`inference_settings`)."""
        return self.inference_settings.class_agnostic_nms

    @class_agnostic_nms.setter
    def class_agnostic_nms(self, value: bool):
        self.inference_settings = self.inference_settings.replace(class_agnostic_nms=value)

    @property
    def soft_nms_sigma(self) -> float:
        """Gaussian soft-NMS's sigma; 0 is hard NMS (see :attr:`inference_settings`)."""
        return self.inference_settings.soft_nms_sigma

    @soft_nms_sigma.setter
    def soft_nms_sigma(self, value: float):
        self.inference_settings = self.inference_settings.replace(soft_nms_sigma=value)

    @property
    def box_weights(self) -> tuple:
        """``(wx, wy, ww, wh)`` of :attr:`box_coder` (read-only: a constructor argument)."""
        return self.box_coder.weights

    def make_predict_function(self, force=False):
        # Class-wise NMS (tf.image.combined_non_max_suppression) has no XLA
        # kernel, so prediction runs as a plain tf.function even when
        # training is compiled with XLA.
        jit_compile = self.jit_compile
        self.jit_compile = False
        try:
            return super().make_predict_function(force=force)
        finally:
            self.jit_compile = jit_compile

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict:
        # The base keras.Model config (functional inputs/outputs) does not
        # apply to a subclassed model; name, trainable and dtype do.
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
        }
        config.update(
            num_classes=self.num_classes,
            backbone=self.backbone_name,
            backbone_weights=self.backbone_weights,
            freeze_at=self.freeze_at,
            freeze_batchnorm=self.freeze_batchnorm,
            sync_batchnorm=self.sync_batchnorm,
            fpn_channels=self.fpn_channels,
            head_channels=self.head_channels,
            num_head_convs=self.num_head_convs,
            use_group_norm=self.use_group_norm,
            group_norm_epsilon=self.group_norm_epsilon,
            p6_from=self.p6_from,
            fpn_padding=self.fpn_padding,
            max_level=self.max_level,
            anchor_generator=keras.saving.serialize_keras_object(self.anchor_generator),
            prior_probability=self.prior_probability,
            bounding_box_format=self.bounding_box_format,
            foreground_iou=self.foreground_iou,
            background_iou=self.background_iou,
            allow_low_quality_matches=self.allow_low_quality_matches,
            box_weights=self.box_weights,
            score_threshold=self.score_threshold,
            pre_nms_topk=self.pre_nms_topk,
            nms_iou_threshold=self.nms_iou_threshold,
            max_detections=self.max_detections,
            class_agnostic_nms=self.class_agnostic_nms,
            soft_nms_sigma=self.soft_nms_sigma,
            fold_batchnorm=self.fold_batchnorm,
            ohem_batch_size=self.ohem_batch_size,
            ohem_positive_fraction=self.ohem_positive_fraction,
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        if "dtype" in config and isinstance(config["dtype"], dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        # Weights come from the saved file: never download or read the
        # original backbone weights again when restoring a model. The freeze
        # defaults still follow the original choice.
        if config.get("backbone_weights") is not None:
            if config.get("freeze_at") is None:
                config["freeze_at"] = 2
            if config.get("freeze_batchnorm") is None:
                config["freeze_batchnorm"] = True
            config["backbone_weights"] = None
        return cls(**config)


class _Untracked:
    """A plain attribute holder: Keras does not track what is inside it."""


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def _sum_over_replicas(value):
    """Sums a scalar over the replicas of the current tf.distribute strategy."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
