"""unveil.common and the shared model pieces of unveil.models.layers: config capture, drop-path rates and
models built on the meta device."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from unveil.common.checkpoints import architecture_of
from unveil.common.config import records_config
from unveil.models.hiera import Hiera
from unveil.models.hieradet import HieraDet
from unveil.models.layers import drop_path_rates, keep_count, keep_indices, keep_mask, random_keep_indices
from unveil.models.mae import MaskedAutoencoderHiera
from unveil.models.mavil import AudioEncoder, MAViL, VideoEncoder

TINY_MAVIL = dict(
    audio_size=(64, 32),
    num_frames=4,
    image_size=32,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    fusion_depth=1,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    projection_dim=16,
    drop_path_rate=0.1,
)
TINY_HIERA = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), drop_path_rate=0.1)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Hiera(**TINY_HIERA),
        lambda: MaskedAutoencoderHiera(
            **{**TINY_HIERA, "q_pool": 2}, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1
        ),
        lambda: HieraDet(
            embed_dim=16,
            stages=(1, 2, 2, 1),
            window_spec=(8, 4, 4, 4),
            global_att_blocks=(3,),
            drop_path_rate=0.2,
        ),
        lambda: MAViL(**TINY_MAVIL),
        lambda: AudioEncoder(audio_size=(64, 32), embed_dim=32, depth=2, num_heads=2),
        lambda: VideoEncoder(num_frames=4, image_size=32, embed_dim=32, depth=2, num_heads=2),
    ],
    ids=["Hiera", "MAE", "HieraDet", "MAViL", "AudioEncoder", "VideoEncoder"],
)
def test_models_record_every_constructor_argument_and_build_on_meta(build):
    with torch.device("meta"):  # no .item() or other host reads in a constructor
        model = build()
    assert all(p.is_meta for p in model.parameters())
    architecture = architecture_of(model)
    assert architecture is not None
    assert set(architecture.init_args) == set(inspect.signature(type(model)).parameters)
    with torch.device("meta"):
        rebuilt = type(model)(**model.config)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_records_config_belongs_to_the_instances_own_class():
    class Base(nn.Module):
        @records_config
        def __init__(self, width: int = 4, sizes=(1, 2)):
            super().__init__()

    class Decorated(Base):
        @records_config
        def __init__(self, depth: int = 2):
            super().__init__(width=8)

    class Undecorated(Base):
        def __init__(self, depth: int = 2):
            super().__init__(width=8)

    assert Base(sizes=[3, 4]).config == {"width": 4, "sizes": (3, 4)}  # lists become tuples
    assert Decorated(depth=5).config == {"depth": 5}
    assert not hasattr(Undecorated(), "config") and architecture_of(Undecorated()) is None


def test_drop_path_rates_follow_the_linear_rule():
    assert drop_path_rates(0.3, 4) == pytest.approx(torch.linspace(0, 0.3, 4).tolist())
    assert drop_path_rates(0.3, 1) == [0.0] and drop_path_rates(0.3, 0) == []


def test_keep_masks_one_rounding_rule():
    assert keep_count(40, 0.8) == 8  # 40 * (1 - 0.8) is 7.999... in floating point
    assert keep_count(64, 0.6) == 25 and keep_count(392, 0.9) == 39  # floor, as the official Hiera
    assert keep_count(8, 0.9) == 0 and keep_count(8, 0.9, min_keep=1) == 1  # official Hiera: 0; MAViL: 1
    with pytest.raises(ValueError, match="mask ratio"):
        keep_count(10, 1.0)
    torch.manual_seed(0)
    indices = random_keep_indices(3, 10, 0.5)
    mask = keep_mask(indices, 10)
    assert mask.sum(1).tolist() == [5, 5, 5] and torch.equal(keep_indices(mask), indices)


def test_rank_and_world_size_without_a_process_group():
    from types import SimpleNamespace

    from unveil.common.distributed import gather_uneven, gather_with_local_grad, rank_and_world_size

    assert rank_and_world_size() == (0, 1)
    assert rank_and_world_size(SimpleNamespace(global_rank=3, world_size=4)) == (
        3,
        4,
    )  # (rank, world), always
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_uneven(x) is x and gather_with_local_grad(x) is x


def test_issue_20550_workaround_is_gated_on_the_lightning_version(monkeypatch):
    from unveil.pretrain import resume

    assert resume.lightning_has_issue_20550()  # no Lightning release has the fix yet
    monkeypatch.setattr(resume, "LIGHTNING_FIXED_20550", "2.7.0")
    assert resume.lightning_has_issue_20550("2.6.6") and not resume.lightning_has_issue_20550("2.7.1")
