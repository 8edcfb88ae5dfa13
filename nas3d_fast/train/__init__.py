"""Training: losses, metrics, optimisers and schedules, the trainer and its checkpoints (SPEC §8).

``nas3d train`` (run.py, cli.py) glues them to the datasets of ``nas3d_fast.data`` and the spaces.
"""

from .batches import StepBatches
from .checkpoint import load_training_checkpoint, model_from_checkpoint, write_inference_checkpoint
from .losses import LOSSES, CELoss, DiceCELoss, DiceFocalLoss, DiceLoss, make_loss
from .metrics import dice_per_class, nsd_per_class
from .optim import OPTIMIZERS, SCHEDULES, LRFactor, NovoGrad, make_optimizer, make_scheduler
from .trainer import TrainConfig, Trainer, ValCase

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "CELoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "DiceLoss",
    "LRFactor",
    "NovoGrad",
    "StepBatches",
    "TrainConfig",
    "Trainer",
    "ValCase",
    "dice_per_class",
    "load_training_checkpoint",
    "make_loss",
    "make_optimizer",
    "make_scheduler",
    "model_from_checkpoint",
    "nsd_per_class",
    "write_inference_checkpoint",
]
