"""Models: plain ``nn.Module``s holding the math (Hiera, MAE, HieraDet trunk, converters)."""

from .convert import (  # noqa: F401
    ConversionReport,
    convert_state_dict,
    detect_format,
)
from .hiera import (  # noqa: F401
    Hiera,
    HieraBlock,
    MaskUnitAttention,
    abs_win_pos_embed,
    hiera_base_16x224,
    hiera_base_224,
    hiera_base_plus_16x224,
    hiera_base_plus_224,
    hiera_huge_16x224,
    hiera_huge_224,
    hiera_large_16x224,
    hiera_large_224,
    hiera_small_224,
    hiera_tiny_224,
    load_hiera_state_dict,
    reroll,
    undo_windowing,
    unroll,
)
from .hieradet import (  # noqa: F401
    HieraDet,
    hieradet_base,
    hieradet_base_plus,
    hieradet_large,
    hieradet_small,
    hieradet_tiny,
)
from .mae import (  # noqa: F401
    MAEOutput,
    MaskedAutoencoderHiera,
    mae_hiera_base_16x224,
    mae_hiera_base_224,
    mae_hiera_base_plus_16x224,
    mae_hiera_base_plus_224,
    mae_hiera_huge_16x224,
    mae_hiera_huge_224,
    mae_hiera_large_16x224,
    mae_hiera_large_224,
    mae_hiera_small_224,
    mae_hiera_tiny_224,
)
from .mavil import (  # noqa: F401
    MAViL,
    MAViLMasks,
    MAViLOutput,
    create_timm_encoder,
    mavil_encoder_to_timm,
    mavil_vit_base_patch16,
    mavil_vit_large_patch16,
    mavil_vit_small_patch16,
)
