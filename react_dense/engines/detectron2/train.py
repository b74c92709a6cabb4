"""The Detectron2 engine of `tools/train_net.py`: our YAML becomes a native Detectron2 config.

`native_config` writes the detector as Detectron2 names it: `MODEL.REACT.*`
(`react_dense.detectron2`) and Detectron2's own keys, with the training and evaluation
vocabularies as Detic-format classifier files beside it. That file, `OUT/detectron2_config.yaml`,
is all Detectron2's builders read: Detectron2's own tools run it once `react_dense.detectron2` is
imported and the datasets it names are registered. The `detectron2:` section's yacs keys are
applied last, so any Detectron2 key can still be set.

The run itself adds what our runner adds on every engine: the open-vocabulary datasets (base
categories in training), AdamW with our schedule (Detectron2's `build_optimizer` makes SGD,
which at AdamW's rate learns nothing), the weights-only checkpointer, the LVIS-rule evaluator
and the score ensemble's calibration; `launch` for several GPUs. Detectron2 is imported lazily (it
is optional).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import weakref
from pathlib import Path

import torch

from react_core.config import ConfigError, write_run_config
from react_core.io import atomic_write_json, atomic_write_text
from react_dense.detection.config import DetectionConfig

TRAIN_NAME = "react_ov_train"
TRAIN_CURVE = "train_metrics.json"
VAL_NAME = "react_ov_val"
NATIVE_CONFIG = "detectron2_config.yaml"
TRAIN_CLASSIFIER = "classifier_train.npy"
TEST_CLASSIFIER = "classifier_test.npy"
log = logging.getLogger(__name__)


def _flatten(mapping: dict, prefix: str = "") -> list:
    items = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{name}."))
        else:
            items.extend([name, value])
    return items


def pyramid_levels(cfg: DetectionConfig, visual) -> list[tuple[str, int]]:
    """(name, stride) of the pyramid levels `react_pyramid` gives this tower with our backbone
    settings: ViT levels at the patch stride times 1 / scale, ResNet p2..p5, plus the top level."""
    from react_core.modeling.tower import tower_kind

    backbone = cfg.backbone
    if tower_kind(visual) == "vit":
        patch = visual.conv1.kernel_size[0]
        strides = [int(patch / scale) for scale in backbone.get("scale_factors", (4.0, 2.0, 1.0, 0.5))]
    else:
        strides = [4, 8, 16, 32]
    if backbone.get("top_block", True):
        strides.append(strides[-1] * 2)
    return [(f"p{int(round(math.log2(stride)))}", stride) for stride in strides]


def tower_keys(cfg: DetectionConfig, visual) -> dict:
    """`MODEL.REACT.*` for our `model:` and `backbone:` sections (ClipBackbone's arguments)."""
    from react_core.modeling.tower import tower_kind

    model, backbone = cfg.model, dict(cfg.backbone)
    if model.architecture:
        raise ConfigError("model.architecture: a Detectron2 config names its tower by an open_clip architecture name "
                          "(MODEL.REACT.MODEL); register the architecture with open_clip.add_model_config and name it")
    if model.quick_gelu is not None:
        raise ConfigError("model.quick_gelu: a Detectron2 config names the activation in the architecture name "
                          "(model.name=ViT-B-32-quickgelu)")
    kind = backbone.pop("type", "ClipBackbone")
    if kind != "ClipBackbone":
        raise ConfigError(f"backbone.type={kind!r}: the Detectron2 engine builds ClipBackbone's settings on Detectron2's pyramids")
    unknown = set(backbone) - {"freeze", "out_channels", "scale_factors", "top_block", "features", "feature_block"}
    if unknown:
        raise ConfigError(f"backbone: {', '.join(sorted(unknown))} have no Detectron2 counterpart")
    keys = {
        "MODEL": model.name, "PRETRAINED": model.pretrained or "", "WEIGHTS": model.weights or "",
        "BASE_WEIGHTS": model.base_weights or "", "FREEZE": backbone.get("freeze", "frozen"),
        "FEATURES": backbone.get("features", "tokens"), "BLOCK": backbone.get("feature_block", -1),
        "TOP_BLOCK": backbone.get("top_block", True),
    }
    if tower_kind(visual) == "vit":
        keys["STRIDE"] = visual.conv1.kernel_size[0]  # the patch grid itself, as the torchvision engine reads it
        keys["SCALE_FACTORS"] = tuple(float(s) for s in backbone.get("scale_factors", (4.0, 2.0, 1.0, 0.5)))
    return keys


def classifier_keys(cfg: DetectionConfig, out: Path) -> tuple[dict, dict]:
    """(`MODEL.REACT.ZEROSHOT.*`, `MODEL.ROI_BOX_HEAD.*` loss keys) for our `head:` and `text:`
    sections; templates given as a list are written to `OUT/templates.txt`."""
    head = dict(cfg.head)
    kind = head.pop("type", "RegionTextClassifier")
    if kind != "RegionTextClassifier":
        raise ConfigError(f"head.type={kind!r}: the Detectron2 engine's zero-shot predictor is RegionTextClassifier")
    federated = int(head.get("federated_classes", 0))
    templates = cfg.text.templates
    if not isinstance(templates, str):
        templates = str(out / "templates.txt")
        atomic_write_text(templates, "".join(f"{line}\n" for line in cfg.text.templates))
    zeroshot = {
        "TEMPERATURE": head.get("temperature", 0.02), "LEARN_TEMPERATURE": head.get("learn_temperature", True),
        "USE_BIAS": head.get("use_bias", True), "PRIOR_PROB": head.get("prior_prob", 0.01),
        "TEMPLATES": templates,
        "CACHE_DIR": cfg.text.cache_dir or "",
    }
    box = {
        "USE_SIGMOID_CE": head.get("loss", "sigmoid") == "sigmoid", "USE_FED_LOSS": federated > 0,
        "FED_LOSS_NUM_CLASSES": federated or 50, "FED_LOSS_FREQ_WEIGHT_POWER": head.get("federated_power", 0.5),
    }
    return zeroshot, box


def native_config(cfg: DetectionConfig, out: Path, visual, num_train_classes: int):
    """Our detection config as a native Detectron2 config: `get_cfg()` with `add_react_config`,
    `MODEL.REACT.*` and Detectron2's own keys, the classifier files `OUT/classifier_*.npy`, and
    the `detectron2:` section's keys applied last.

    Args:
        cfg: our `kind: detection` config.
        out: the run folder (OUTPUT_DIR, where the classifier files are).
        visual: the tower's `visual` module (its kind and patch size set the pyramid keys).
        num_train_classes: the training vocabulary's size (base categories).

    Returns:
        The Detectron2 `CfgNode`.
    """
    from detectron2.config import get_cfg

    from react_dense.detectron2 import add_react_config

    d2 = get_cfg()
    add_react_config(d2)
    model = d2.MODEL
    react = model.REACT
    for key, value in tower_keys(cfg, visual).items():
        setattr(react, key, value)
    zeroshot, box = classifier_keys(cfg, out)
    for key, value in zeroshot.items():
        setattr(react.ZEROSHOT, key, value)
    for key, value in box.items():
        setattr(model.ROI_BOX_HEAD, key, value)
    react.ZEROSHOT.WEIGHT_PATH = str(out / TRAIN_CLASSIFIER)
    react.ZEROSHOT.TEST_WEIGHT_PATH = str(out / TEST_CLASSIFIER)
    options = cfg.ensemble
    ensemble = react.ENSEMBLE
    ensemble.ENABLED, ensemble.BASE_WEIGHT, ensemble.NOVEL_WEIGHT = options.enabled, options.base_weight, options.novel_weight
    ensemble.CLIP_TEMPERATURE, ensemble.REGIONS, ensemble.CROP_SCALE = options.clip_temperature, options.regions, options.crop_scale

    levels = pyramid_levels(cfg, visual)
    names = [name for name, _ in levels]
    model.META_ARCHITECTURE = "GeneralizedRCNN"
    model.BACKBONE.NAME = "build_react_backbone"
    model.BACKBONE.FREEZE_AT = 0
    model.WEIGHTS = ""
    model.FPN.OUT_CHANNELS = cfg.backbone.get("out_channels", 256)
    model.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    model.FPN.NORM = ""
    model.MASK_ON = cfg.detector.masks
    model.RPN.IN_FEATURES = names
    model.ANCHOR_GENERATOR.SIZES = [[8 * stride] for _, stride in levels]
    model.RPN.PRE_NMS_TOPK_TRAIN = cfg.detector.rpn_pre_nms_train
    model.RPN.POST_NMS_TOPK_TRAIN = cfg.detector.rpn_post_nms_train
    model.RPN.PRE_NMS_TOPK_TEST = cfg.detector.rpn_pre_nms_test
    model.RPN.POST_NMS_TOPK_TEST = cfg.detector.rpn_post_nms_test
    model.ROI_HEADS.NAME = "ZeroShotROIHeads"
    model.ROI_HEADS.NUM_CLASSES = num_train_classes
    model.ROI_HEADS.IN_FEATURES = names[:4]
    model.ROI_HEADS.BATCH_SIZE_PER_IMAGE = cfg.detector.roi_batch_size
    model.ROI_HEADS.POSITIVE_FRACTION = cfg.detector.roi_positive_fraction
    model.ROI_HEADS.SCORE_THRESH_TEST = cfg.detector.score_threshold
    model.ROI_HEADS.NMS_THRESH_TEST = cfg.detector.nms_threshold
    model.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    model.ROI_BOX_HEAD.NUM_FC = 2
    model.ROI_BOX_HEAD.FC_DIM = cfg.detector.box_head_dim
    model.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    model.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    model.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    model.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    model.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    model.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    model.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 2
    model.ROI_MASK_HEAD.CONV_DIM = model.FPN.OUT_CHANNELS  # as the torchvision engine
    d2.TEST.DETECTIONS_PER_IMAGE = cfg.detector.detections_per_image
    d2.INPUT.MIN_SIZE_TRAIN = (cfg.detector.min_size,)
    d2.INPUT.MAX_SIZE_TRAIN = cfg.detector.max_size
    d2.INPUT.MIN_SIZE_TEST = cfg.detector.min_size
    d2.INPUT.MAX_SIZE_TEST = cfg.detector.max_size
    d2.INPUT.RANDOM_FLIP = "horizontal" if cfg.data.hflip else "none"
    d2.DATASETS.TRAIN = (TRAIN_NAME,)
    d2.DATASETS.TEST = (VAL_NAME,)
    d2.DATALOADER.NUM_WORKERS = cfg.data.num_workers
    d2.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
    d2.DATALOADER.ASPECT_RATIO_GROUPING = False  # batches of consecutive samples: --resume continues at the exact one
    d2.SOLVER.CHECKPOINT_PERIOD = cfg.train.checkpoint_interval
    d2.TEST.EVAL_PERIOD = 0
    model.DEVICE = cfg.train.device
    return finish_detectron2_cfg(d2, cfg.train, cfg.detectron2, out, "the detectron2 section")


def write_native_config(d2, out: Path) -> Path:
    """`OUT/detectron2_config.yaml`: the config Detectron2's builders read, with what a reader needs
    to run it with Detectron2's own tools."""
    header = (
        "# The detector of this run as Detectron2 reads it (react's tools/train_net.py wrote it).\n"
        "# Detectron2's own tools run it after `import react_dense.detectron2` (or with\n"
        f"# DETECTRON2_ENV_MODULE=react_dense.detectron2), once {TRAIN_NAME} (base categories) and {VAL_NAME}\n"
        "# are registered. The run trained with AdamW (react_dense.engines.optim); Detectron2's\n"
        "# tools/train_net.py builds SGD from SOLVER.*, which wants an SGD learning rate (about 0.02 at 16 images).\n"
    )
    path = out / NATIVE_CONFIG
    atomic_write_text(path, header + d2.dump())
    return path


def finish_detectron2_cfg(d2, train, detectron2_section: dict, out: Path, where: str):
    """Our `train:` section in Detectron2's solver keys, then the YAML's `detectron2:` keys,
    applied last so they win. The optimizer itself is ours (`train_settings`): Detectron2's
    `build_optimizer` makes SGD whatever `SOLVER` says, which at AdamW's lr learns nothing."""
    solver = d2.SOLVER
    solver.IMS_PER_BATCH = train.batch_size
    solver.BASE_LR = train.lr
    solver.WEIGHT_DECAY = train.weight_decay
    solver.WEIGHT_DECAY_NORM = 0.0
    solver.MAX_ITER = train.max_iters
    solver.STEPS = ()
    solver.WARMUP_ITERS = train.warmup_iters
    solver.LR_SCHEDULER_NAME = "WarmupCosineLR"
    solver.CLIP_GRADIENTS.ENABLED = bool(train.grad_clip)
    solver.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    solver.CLIP_GRADIENTS.CLIP_VALUE = train.grad_clip or 0.0
    d2.SEED = train.seed
    d2.OUTPUT_DIR = str(out)
    for key, value in zip(*[iter(_flatten(detectron2_section))] * 2):
        try:
            d2.merge_from_list([key, value])
        except (KeyError, AssertionError, ValueError) as error:
            raise ConfigError(f"{where}: detectron2.{key}={value!r}: {error}") from None
    return d2


def train_settings(d2):
    """Our `train:` section as Detectron2 keys hold it after the `detectron2:` overrides."""
    solver = d2.SOLVER
    return argparse.Namespace(
        max_iters=solver.MAX_ITER, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY,
        warmup_iters=solver.WARMUP_ITERS, grad_clip=solver.CLIP_GRADIENTS.CLIP_VALUE,
    )


class ReactSchedule:
    """A mixin for a Detectron2 trainer: our AdamW and warm-up + cosine schedule, read back from
    the native config's `SOLVER` keys, where Detectron2's own trainer builds SGD."""

    @classmethod
    def build_optimizer(cls, d2, model):
        from react_dense.engines.optim import build_optimizer

        return build_optimizer(model, train_settings(d2))

    @classmethod
    def build_lr_scheduler(cls, d2, optimizer):
        from react_dense.engines.optim import build_scheduler

        return build_scheduler(optimizer, train_settings(d2))


def training_writers(out: Path, steps: int) -> list:
    """A progress line in the log and the JSON training curve `OUT/train_metrics.json`."""
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    return [CommonMetricPrinter(steps), JSONWriter(str(out / TRAIN_CURVE))]


def build_trainer_class(evaluator_factory, before_test, log_period: int):
    """DefaultTrainer with our optimizer and schedule (the torchvision engine's), the training
    curve in `train_metrics.json` (so `metrics.json` is the evaluation, as in every engine), a log
    line every `log_period` steps, and `before_test(model)` before each evaluation."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.utils import comm

    from react_dense.engines.detectron2.resume import ExactResume

    class WeightsOnlyCheckpointer(DetectionCheckpointer):
        """Detectron2's checkpointer, reading with `torch.load(weights_only=True)` only: its own
        unpickles `.pkl` and `.pyth` files, which can run code."""

        def _load_file(self, filename):
            if filename.endswith((".pkl", ".pyth")):
                raise ConfigError(f"{filename}: pickled weights are refused (they can run code); "
                                  "convert them to a .pth state dict or .safetensors")
            return super()._load_file(filename)

        def _torch_load(self, f):
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except Exception as error:
                raise ConfigError(f"{f}: cannot be read as a weights-only checkpoint ({type(error).__name__})") from None

    class Trainer(ExactResume, ReactSchedule, DefaultTrainer):
        def build_writers(self):
            return training_writers(Path(self.cfg.OUTPUT_DIR), self.max_iter)

        def build_hooks(self):
            # DefaultTrainer has just made its own checkpointer: replaced before the periodic-save
            # hook takes it, so loading and saving go through one, weights-only, checkpointer.
            self.checkpointer = WeightsOnlyCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
            kept = [h for h in super().build_hooks() if not isinstance(h, hooks.PeriodicWriter)]
            if comm.is_main_process():
                kept.append(hooks.PeriodicWriter(self.build_writers(), period=log_period))
            return kept

        @classmethod
        def build_evaluator(cls, d2, dataset_name):
            return evaluator_factory()

        @classmethod
        def test(cls, d2, model, evaluators=None):
            before_test(model)
            return super().test(d2, model, evaluators)

    return Trainer


def register_datasets(cfg: DetectionConfig):
    """Training split (base categories only, with their LVIS `image_count`s as Detectron2's
    `class_image_count` for the federated loss) and evaluation split (all categories) in the catalogs."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from react_dense.detection.data import DetectionDataset, OpenVocabularySplit, load_coco, resolve_image_path

    categories = load_coco(cfg.data.train or cfg.data.val).dataset["categories"]
    split = OpenVocabularySplit.from_categories(categories, cfg.data.novel)
    by_id = {c["id"]: c for c in categories}

    def dicts(annotation_file, image_root, category_ids):
        dataset = DetectionDataset(annotation_file, image_root, category_ids, with_masks=False)
        records = []
        for image_id in dataset.image_ids:
            info = dataset.coco.imgs[image_id]
            annotations = [
                {"bbox": a["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "category_id": dataset.label_of[a["category_id"]],
                 "segmentation": a.get("segmentation", []), "iscrowd": 0}
                for a in dataset.kept_annotations(image_id)
            ]
            records.append({"file_name": str(resolve_image_path(info, dataset.image_root)), "image_id": image_id,
                            "height": info["height"], "width": info["width"], "annotations": annotations})
        return records

    all_ids = sorted(by_id)
    for name, source, root, ids in (
        (TRAIN_NAME, cfg.data.train, cfg.data.train_images, split.base_ids),
        (VAL_NAME, cfg.data.val, cfg.data.val_images, all_ids),
    ):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if source:
            DatasetCatalog.register(name, functools.partial(dicts, source, root, ids))
            MetadataCatalog.get(name).set(
                thing_classes=[by_id[i]["name"] for i in ids], category_ids=ids, json_file=source,
                class_image_count=[{"id": i, "image_count": by_id[i].get("image_count", 1)} for i in ids],
            )
    return split


def build_evaluator_class():
    from detectron2.evaluation import DatasetEvaluator
    from detectron2.utils import comm

    from react_dense.detection.evaluation import evaluate, to_coco_results

    class OpenVocabularyEvaluator(DatasetEvaluator):
        """LVIS-rule box/mask AP over all categories (react_dense.detection.evaluation), gathered over GPUs."""

        def __init__(self, cfg: DetectionConfig, category_ids, novel_ids, out: Path):
            self.cfg, self.category_ids, self.novel_ids, self.out = cfg, category_ids, novel_ids, out

        def reset(self):
            self.results = []

        def process(self, inputs, outputs):
            for item, output in zip(inputs, outputs):
                instances = output["instances"].to("cpu")
                masks = instances.pred_masks if instances.has("pred_masks") else None
                self.results.extend(to_coco_results(
                    item["image_id"], instances.pred_boxes.tensor, instances.scores, instances.pred_classes, self.category_ids, masks
                ))

        def evaluate(self):
            gathered = comm.gather(self.results, dst=0)
            if not comm.is_main_process():
                return {}
            results = [r for part in gathered for r in part]
            atomic_write_json(self.out / "inference" / "detections.json", results)
            from react_dense.detection.data import load_coco

            iou_types = ("bbox", "segm") if self.cfg.detector.masks else ("bbox",)
            metrics = evaluate(load_coco(self.cfg.data.val), results, iou_types, self.cfg.data.lvis_style,
                               self.cfg.detector.detections_per_image, self.novel_ids)
            atomic_write_json(self.out / "metrics.json", metrics)
            return {"metrics": metrics}

    return OpenVocabularyEvaluator


def _unwrapped(model):
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def calibration_records(model, augmentations, images: list, targets: list):
    """`react_dense.detection.calibrate`'s records for a Detectron2 detector with `ZeroShotROIHeads`
    (in eval mode): the images resized by the test-time `augmentations`, as its test loader does,
    and each proposal's detector scores [R, C], CLIP region embedding [R, D] and label."""
    import numpy as np
    from detectron2.data import transforms as T

    from react_dense.detectron2.roi_heads import INPUT_IMAGES
    from react_dense.modeling.calibration import label_regions

    inputs, gt_boxes = [], []
    for image, target in zip(images, targets):
        pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()  # the uint8 RGB file the test loader reads
        resized = T.AugInput(pixels, boxes=target["boxes"].numpy().astype(np.float64))
        T.AugmentationList(augmentations)(resized)
        inputs.append({"image": torch.as_tensor(np.ascontiguousarray(resized.image.transpose(2, 0, 1)))})
        gt_boxes.append(torch.as_tensor(resized.boxes, dtype=torch.float32))
    batch = model.preprocess_image(inputs)
    features = model.backbone(batch.tensor)
    proposals, _ = model.proposal_generator(batch, features, None)
    heads = model.roi_heads
    (logits, _), regions = heads.classify({**features, INPUT_IMAGES: batch.tensor}, proposals)
    labels = torch.cat([
        label_regions(p.proposal_boxes.tensor.cpu(), boxes, target["labels"]) for p, boxes, target in zip(proposals, gt_boxes, targets)
    ])
    return heads.box_predictor.classifier.scores(logits).cpu(), regions.cpu(), labels


def _calibrate(cfg: DetectionConfig, model, augmentations, category_ids, split, out) -> None:
    """The score ensemble's calibration (`react_dense.detection.calibrate`) with this detector's
    proposals, on every process (each holds its own ensemble); `out` None writes no report."""
    from react_dense.detection.calibrate import calibrate_detector

    module = _unwrapped(model)
    heads = module.roi_heads
    training = module.training
    module.eval()
    try:
        calibrate_detector(
            cfg, heads.ensemble, heads.box_predictor.classifier.class_embeddings, category_ids, split,
            functools.partial(calibration_records, module, augmentations), out,
        )
    finally:
        module.train(training)


def write_classifiers(cfg: DetectionConfig, out: Path):
    """The training vocabulary (base categories) and the evaluation vocabulary (all categories)
    as Detic-format classifier files in `out`; returns (the loaded CLIP, the evaluation vocabulary)."""
    from react_core.modeling.text import save_classifier_file
    from react_dense.detection.build import dataset_vocabularies

    bundle = cfg.model.load()
    train_vocab, eval_vocab, _ = dataset_vocabularies(bundle, cfg, cfg.data.train or cfg.data.val)
    save_classifier_file(out / TRAIN_CLASSIFIER, train_vocab.embeddings)
    save_classifier_file(out / TEST_CLASSIFIER, eval_vocab.embeddings)
    return bundle, eval_vocab


def main(cfg: DetectionConfig, out: Path, eval_only: bool, resume: bool, weights, tower_from_config: bool = False):
    """One process's work (Detectron2's `launch` runs this on every GPU): the native config and its
    classifier files, then Detectron2's trainer on it. Seeded, so two runs of one config are
    identical; evaluation runs once (the trainer's EvalHook after the last step, or `test` for
    --eval-only)."""
    from detectron2.data import detection_utils
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from mmengine.runner import set_random_seed

    import react_dense.detectron2  # noqa: F401  (registers the builders)
    from react_dense.engines.checkpoint import FINAL, load_checkpoint

    checkpoint = Path(weights) if weights else out / FINAL
    if eval_only and not checkpoint.is_file():
        raise ConfigError(f"--eval-only: checkpoint not found: {checkpoint} (train first, or pass --weights FILE)")
    set_random_seed(cfg.train.seed)  # a random-init tower's text embeddings are those of the tower the model loads
    split = register_datasets(cfg)
    bundle, eval_vocab = write_classifiers(cfg, out)
    d2 = native_config(cfg, out, bundle.model.visual, len(split.base_ids))
    del bundle
    d2.freeze()
    default_setup(d2, argparse.Namespace(config_file="", eval_only=eval_only, resume=resume))
    if comm.is_main_process():  # after default_setup, whose Detectron2 dump would take config.yaml
        write_run_config(cfg, out)
        write_native_config(d2, out)
    evaluator_class = build_evaluator_class()
    augmentations = detection_utils.build_augmentation(d2, is_train=False)
    category_ids = eval_vocab.vocabulary.category_ids

    def before_test(model):
        _calibrate(cfg, model, augmentations, category_ids, split, out if comm.is_main_process() else None)

    Trainer = build_trainer_class(lambda: evaluator_class(cfg, category_ids, split.novel_ids, out), before_test,
                                  cfg.train.log_interval)
    if eval_only:
        model = Trainer.build_model(d2)
        load_checkpoint(checkpoint, model, tower_from_model=tower_from_config)
        Trainer.test(d2, model)
    else:
        trainer = Trainer(d2)
        trainer.resume_or_load(resume=resume)
        trainer.train()
    return json.loads((out / "metrics.json").read_text()) if comm.is_main_process() else None


def launch_run(
    cfg: DetectionConfig, out: Path, *, eval_only: bool = False, resume: bool = False, weights=None,
    tower_from_config: bool = False, num_gpus: int = 1, num_machines: int = 1, machine_rank: int = 0, dist_url: str = "auto",
):
    """`main` in this process, or through Detectron2's `launch` on every GPU of every machine."""
    try:
        from detectron2.engine import launch
    except ImportError:
        raise ConfigError("engine: detectron2 needs Detectron2 installed (docs/installation.md); or use engine=torchvision") from None
    if num_gpus > 1 and not torch.cuda.is_available():
        raise ConfigError("--num-gpus > 1 needs CUDA GPUs")
    out.mkdir(parents=True, exist_ok=True)
    main_args = (cfg, out, eval_only, resume, weights, tower_from_config)
    if num_gpus * num_machines > 1:
        launch(main, num_gpus, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url, args=main_args)
        metrics_file = out / "metrics.json"
        return json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return main(*main_args)
