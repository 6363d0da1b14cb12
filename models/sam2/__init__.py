"""SAM 2 in unveil: the model on unveil's HieraDet trunk, and image / video predictors with the
official ``sam2`` package's API (see README, "SAM 2")."""

from .loading import TrunkLoadReport, load_trunk, sam2_from_trunk  # noqa: F401
from .model import (  # noqa: F401
    NO_OBJ_SCORE,
    SAM2,
    FrameOutput,
    HeadsOutput,
    SAM2Config,
    TrackingConfig,
    sam2_hiera_base_plus,
    sam2_hiera_large,
    sam2_hiera_small,
    sam2_hiera_tiny,
)
from .postprocess import fill_holes  # noqa: F401
from .predictor import ImagePredictor  # noqa: F401
from .video import VideoPredictor, VideoState  # noqa: F401
