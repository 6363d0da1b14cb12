"""Semi-supervised video object segmentation evaluation (DAVIS protocol) of a SAM 2 video predictor.

Each object of a video's first annotated frame is prompted with its mask on that frame; the predictor
propagates every object through the video, and the predicted masks (logits > 0) of the annotated frames
are scored with J&F (:mod:`unveil.finetune.vos_metrics`: first and last frames dropped, mean over
objects). The predictor is anything with the official ``SAM2VideoPredictor`` API (``init_state``,
``add_new_mask``, ``propagate_in_video``, ``reset_state``), e.g. ``unveil.models.sam2.VideoPredictor``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from unveil.datasets.vos import VOSFolder
from unveil.finetune.vos_metrics import VOSScores

__all__ = ["evaluate_semi_supervised", "predict_video"]


def _frame_order(folder: Path) -> list[str]:
    """JPEG stems in the order the SAM 2 predictors number frames (numeric names by value)."""
    stems = [
        p.stem
        for p in folder.iterdir()
        if p.suffix.lower() in (".jpg", ".jpeg") and not p.name.startswith(".")
    ]
    return sorted(stems, key=lambda stem: (0, int(stem), "") if stem.isdigit() else (1, 0, stem))


@torch.inference_mode()
def predict_video(
    predictor,
    folder: str | Path,
    stems: list[str],
    ids: list,
    truth: torch.Tensor,
    max_frames: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Track one video's objects from their masks on its first annotated frame.

    Args:
        folder: the video's JPEG frames; ``stems``: names of its annotated frames; ``ids``: object ids;
        truth: bool [T, O, H, W] masks of the objects over the annotated frames (``VOSFolder.video_annotations``).
        max_frames: track this many frames from the first annotated one only.

    Returns:
        (predicted, true) bool masks [T', O, H, W] of the annotated frames that were tracked.
    """
    folder = Path(folder)
    order = _frame_order(folder)
    position = {stem: i for i, stem in enumerate(order)}
    missing = [stem for stem in stems if stem not in position]
    if missing:
        raise FileNotFoundError(f"{folder}: annotated frame {missing[0]} has no JPEG")
    first = position[stems[0]]
    track = len(order) - first if max_frames is None else max_frames
    state = predictor.init_state(str(folder))
    for o, object_id in enumerate(ids):
        predictor.add_new_mask(state, first, object_id, truth[0, o])
    predicted: dict[int, torch.Tensor] = {}
    for frame_idx, obj_ids, logits in predictor.propagate_in_video(
        state, start_frame_idx=first, max_frame_num_to_track=track - 1
    ):
        by_id = dict(zip(obj_ids, logits[:, 0].cpu() > 0))
        predicted[frame_idx] = torch.stack([by_id[object_id] for object_id in ids])  # [O, H, W]
    predictor.reset_state(state)
    kept = [t for t, stem in enumerate(stems) if position[stem] in predicted]
    return torch.stack([predicted[position[stems[t]]] for t in kept]), truth[kept]


@torch.inference_mode()
def evaluate_semi_supervised(
    predictor,
    dataset: VOSFolder,
    max_videos: int | None = None,
    max_frames: int | None = None,
) -> dict:
    """J&F of ``predictor`` on the videos of ``dataset`` (a :class:`VOSFolder`), prompted with first-frame masks.

    Args:
        max_videos: evaluate the first this many videos only.
        max_frames: track this many frames from the first annotated one only (at least 3: J&F drops
            the first and last).

    Returns:
        ``{"J", "F", "J&F"}`` (fractions, means over all objects) and ``"videos"``:
        ``{video: {"J": [per object], "F": [per object]}}``.
    """
    if max_frames is not None and max_frames < 3:
        raise ValueError(
            f"max_frames must be at least 3 (J&F drops the first and last frames), got {max_frames}"
        )
    scores = VOSScores()
    per_video = {}
    count = len(dataset) if max_videos is None else min(max_videos, len(dataset))
    for index in range(count):
        folder, stems, ids, truth = dataset.video_annotations(index)
        pred, kept_truth = predict_video(predictor, folder, stems, ids, truth, max_frames)
        j, f = scores.update(pred, kept_truth)
        per_video[dataset.videos[index]] = {"J": j.tolist(), "F": f.tolist()}
    return {**scores.compute(), "videos": per_video}
