"""Self-supervised pretraining: LightningModules that train from scratch (MAE on Hiera for images and video;
MAViL stage 1 and stage 2)."""

from .mae import MAEPretrainModule
from .mavil import MAViLPretrainModule, MAViLSelfTrainModule

__all__ = ["MAEPretrainModule", "MAViLPretrainModule", "MAViLSelfTrainModule"]
