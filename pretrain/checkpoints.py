"""Moved to :mod:`unveil.common.checkpoints` (fine-tuning reads the same files and must not import
``pretrain/``); these names stay importable from here."""

from unveil.common.checkpoints import (  # noqa: F401
    ARCHITECTURE_KEY,
    BACKBONE_FORMAT,
    BACKBONE_FORMAT_VERSION,
    MODEL_PACKAGE,
    Architecture,
    architecture_from_run_config,
    architecture_of,
    backbone_from_object,
    build_backbone,
    build_model,
    describe_mismatch,
    find_run_config,
    is_lightning_checkpoint,
    load_backbone,
    load_checkpoint_state,
    read_checkpoint,
    record_architecture,
    resolve_model,
    save_backbone,
)
from unveil.common.checkpoints import __all__  # noqa: F401
