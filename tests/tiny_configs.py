"""Small model configurations that several test files build (import as ``from tiny_configs import ...``)."""

TINY_MAVIL = dict(
    audio_size=(64, 128),
    num_frames=4,
    image_size=32,
    patch_size=16,
    tubelet_frames=2,
    embed_dim=32,
    depth=2,
    num_heads=2,
    fusion_depth=1,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    projection_dim=16,
)
"""A MAViL small enough for CPU tests: 2-block encoders of width 32, one fusion block, a 1-block decoder."""
