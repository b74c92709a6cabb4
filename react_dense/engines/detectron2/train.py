"""The Detectron2 engine: our YAML -> yacs config, open-vocabulary datasets, LVIS-rule evaluator,
Detectron2's trainer and checkpointer, `launch` for several GPUs.

Our config stays the one users edit: `to_detectron2_cfg` fills `get_cfg()` from it, after
`add_react_config`, then applies the `detectron2:` section's yacs keys last, so any Detectron2
key can still be set. Detectron2 is imported lazily (it is optional); `detectron2.model_zoo` is
never imported (it needs `pkg_resources`).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import weakref
from pathlib import Path

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from react_core.config import ConfigError, write_run_config
from react_core.io import atomic_write_json
from react_dense.detection.config import DetectionConfig

# Detectron2 normalises 0..255 pixels; CLIP's statistics are open_clip's, on 0..1.
PIXEL_MEAN = [255 * value for value in OPENAI_DATASET_MEAN]
PIXEL_STD = [255 * value for value in OPENAI_DATASET_STD]
TRAIN_NAME = "react_ov_train"
TRAIN_CURVE = "train_metrics.json"
VAL_NAME = "react_ov_val"
log = logging.getLogger(__name__)


def add_react_config(cfg) -> None:
    """`cfg.REACT.CONFIG`: the resolved YAML of ours that the backbone and heads are built from;
    `cfg.REACT.LOG_PERIOD`: steps between lines of the training log."""
    from detectron2.config import CfgNode

    cfg.REACT = CfgNode()
    cfg.REACT.CONFIG = ""
    cfg.REACT.LOG_PERIOD = 20


def _flatten(mapping: dict, prefix: str = "") -> list:
    items = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{name}."))
        else:
            items.extend([name, value])
    return items


def to_detectron2_cfg(cfg: DetectionConfig, parts, config_file: Path, out: Path, num_train_classes: int):
    from detectron2.config import get_cfg

    from react_dense.modeling.backbone import CLIP_MAP

    d2 = get_cfg()
    add_react_config(d2)
    d2.REACT.CONFIG = str(config_file)

    model = d2.MODEL
    model.META_ARCHITECTURE = "GeneralizedRCNN"
    model.BACKBONE.NAME = "build_react_clip_backbone"
    model.BACKBONE.FREEZE_AT = 0
    model.MASK_ON = cfg.detector.masks
    model.PIXEL_MEAN, model.PIXEL_STD = PIXEL_MEAN, PIXEL_STD
    d2.INPUT.FORMAT = "RGB"
    levels = [name for name in parts.backbone.output_shape() if name != CLIP_MAP]
    model.RPN.IN_FEATURES = levels
    model.ANCHOR_GENERATOR.SIZES = [[8 * 2 ** int(name[1:])] for name in levels]
    model.RPN.PRE_NMS_TOPK_TRAIN = cfg.detector.rpn_pre_nms_train
    model.RPN.POST_NMS_TOPK_TRAIN = cfg.detector.rpn_post_nms_train
    model.RPN.PRE_NMS_TOPK_TEST = cfg.detector.rpn_pre_nms_test
    model.RPN.POST_NMS_TOPK_TEST = cfg.detector.rpn_post_nms_test
    model.ROI_HEADS.NAME = "RegionTextROIHeads"
    model.ROI_HEADS.NUM_CLASSES = num_train_classes
    model.ROI_HEADS.IN_FEATURES = levels[:4]
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
    model.ROI_MASK_HEAD.CONV_DIM = parts.backbone.output_shape()[levels[0]].channels  # as the torchvision engine
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
    solver.CLIP_GRADIENTS.CLIP_VALUE = train.grad_clip or 0.0
    d2.REACT.LOG_PERIOD = train.log_interval
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


def training_writers(out: Path, steps: int) -> list:
    """A progress line in the log and the JSON training curve `OUT/train_metrics.json`."""
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    return [CommonMetricPrinter(steps), JSONWriter(str(out / TRAIN_CURVE))]


def build_trainer_class(evaluator_factory, before_test, after_test):
    """DefaultTrainer with our optimizer and schedule (the torchvision engine's), the training
    curve in `train_metrics.json` (so `metrics.json` is the evaluation, as in every engine), and
    the evaluation vocabulary swapped in for `test`."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.utils import comm

    from react_dense.engines.detectron2.resume import ExactResume
    from react_dense.engines.optim import build_optimizer, build_scheduler

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

    class Trainer(ExactResume, DefaultTrainer):
        @classmethod
        def build_optimizer(cls, d2, model):
            return build_optimizer(model, train_settings(d2))

        @classmethod
        def build_lr_scheduler(cls, d2, optimizer):
            return build_scheduler(optimizer, train_settings(d2))

        def build_writers(self):
            return training_writers(Path(self.cfg.OUTPUT_DIR), self.max_iter)

        def build_hooks(self):
            # DefaultTrainer has just made its own checkpointer: replaced before the periodic-save
            # hook takes it, so loading and saving go through one, weights-only, checkpointer.
            self.checkpointer = WeightsOnlyCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
            kept = [h for h in super().build_hooks() if not isinstance(h, hooks.PeriodicWriter)]
            if comm.is_main_process():
                kept.append(hooks.PeriodicWriter(self.build_writers(), period=self.cfg.REACT.LOG_PERIOD))
            return kept

        @classmethod
        def build_evaluator(cls, d2, dataset_name):
            return evaluator_factory()

        @classmethod
        def test(cls, d2, model, evaluators=None):
            before_test(model)
            try:
                return super().test(d2, model, evaluators)
            finally:
                after_test(model)

    return Trainer


def register_datasets(cfg: DetectionConfig):
    """Training split (base categories only) and evaluation split (all categories) in the catalogs."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from react_dense.detection.data import DetectionDataset, OpenVocabularySplit, load_coco, resolve_image_path

    categories = load_coco(cfg.data.train or cfg.data.val).dataset["categories"]
    split = OpenVocabularySplit.from_categories(categories, cfg.data.novel)
    names = {c["id"]: c["name"] for c in categories}

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

    all_ids = sorted(names)
    for name, source, root, ids in (
        (TRAIN_NAME, cfg.data.train, cfg.data.train_images, split.base_ids),
        (VAL_NAME, cfg.data.val, cfg.data.val_images, all_ids),
    ):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if source:
            DatasetCatalog.register(name, functools.partial(dicts, source, root, ids))
            MetadataCatalog.get(name).set(thing_classes=[names[i] for i in ids], category_ids=ids, json_file=source)
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


def _set_vocabulary(model, vocab) -> None:
    module = _unwrapped(model)
    device = next(module.parameters()).device
    module.roi_heads.box_predictor.set_vocabulary(vocab.embeddings.to(device), vocab.is_base.to(device), vocab.image_counts)


def _calibrate(cfg: DetectionConfig, model, augmentations, eval_vocab, split, out) -> None:
    """The score ensemble's calibration (`react_dense.detection.calibrate`) with this detector's
    proposals, on every process (each holds its own ensemble); `out` None writes no report."""
    from react_dense.detection.calibrate import calibrate_detector
    from react_dense.engines.detectron2.modeling import calibration_records

    module = _unwrapped(model)
    predictor = module.roi_heads.box_predictor
    training = module.training
    module.eval()
    try:
        calibrate_detector(
            cfg, predictor.ensemble, predictor.classifier.class_embeddings, eval_vocab.vocabulary.category_ids, split,
            functools.partial(calibration_records, module, augmentations), out,
        )
    finally:
        module.train(training)


def main(cfg: DetectionConfig, out: Path, eval_only: bool, resume: bool, weights, tower_from_config: bool = False):
    """One process's work (Detectron2's `launch` runs this on every GPU). Everything random is
    built after seeding, so two runs of one config are identical; evaluation runs once (the
    trainer's EvalHook after the last step, or `test` for --eval-only)."""
    from detectron2.data import detection_utils
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    from react_dense.detection.build import build_parts, dataset_vocabularies
    from react_dense.engines.detectron2.modeling import register_parts
    from mmengine.runner import set_random_seed

    from react_dense.engines.checkpoint import FINAL, load_checkpoint

    checkpoint = Path(weights) if weights else out / FINAL
    if eval_only and not checkpoint.is_file():
        raise ConfigError(f"--eval-only: checkpoint not found: {checkpoint} (train first, or pass --weights FILE)")
    set_random_seed(cfg.train.seed)
    config_file = write_run_config(cfg, out)
    parts = build_parts(cfg)
    register_parts(str(config_file), parts)
    split = register_datasets(cfg)
    d2 = to_detectron2_cfg(cfg, parts, config_file, out, len(split.base_ids))
    d2.freeze()
    default_setup(d2, argparse.Namespace(config_file="", eval_only=eval_only, resume=resume))
    train_vocab, eval_vocab, _ = dataset_vocabularies(parts.bundle, cfg, cfg.data.train or cfg.data.val)
    evaluator_class = build_evaluator_class()
    augmentations = detection_utils.build_augmentation(d2, is_train=False)

    def before_test(model):
        _set_vocabulary(model, eval_vocab)
        _calibrate(cfg, model, augmentations, eval_vocab, split, out if comm.is_main_process() else None)

    Trainer = build_trainer_class(
        lambda: evaluator_class(cfg, eval_vocab.vocabulary.category_ids, split.novel_ids, out),
        before_test,
        lambda model: _set_vocabulary(model, train_vocab),
    )
    if eval_only:
        model = Trainer.build_model(d2)
        load_checkpoint(checkpoint, model, tower_from_model=tower_from_config)
        Trainer.test(d2, model)
    else:
        trainer = Trainer(d2)
        _set_vocabulary(trainer.model, train_vocab)
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
