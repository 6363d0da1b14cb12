"""``VideoPredictor``: the official ``SAM2VideoPredictor`` API on unveil's SAM 2.

    predictor = VideoPredictor(sam2_hiera_tiny())
    state = predictor.init_state("frames/")            # a folder of JPEG frames, or an mp4
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=[[x, y]], labels=[1])
    for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
        ...                                             # masks: [objects, 1, H, W] logits

Memory stays flat in the video's length where the official predictor's grows: frames are decoded
when tracking reaches them (``unveil.datasets.sam2_frames``), only the current frame's features are
kept, and each frame's outputs go to ``storage_device`` (the CPU by default) as they are made.
What remains per frame and object is the official compact output: the memory in bfloat16
(64 x 64 x 64), the low-res logits (256 x 256) and the 256-d object pointer.

Hole filling (``fill_hole_area``, 8 like the official post-processing) runs in torch on any
device; the official package skips it where its CUDA extension is missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import NO_OBJ_SCORE, SAM2, FrameFeatures, FrameOutput, ObjectMemory
from .postprocess import fill_holes
from .predictor import IMAGE_MEAN, IMAGE_STD

__all__ = ["VideoPredictor", "VideoState"]


@dataclass
class VideoState:
    """One video's tracking session (what the official predictor keeps in ``inference_state``)."""

    frames: Sequence[torch.Tensor]
    num_frames: int
    video_height: int
    video_width: int
    device: torch.device
    storage_device: torch.device
    obj_ids: list = field(default_factory=list)
    obj_id_to_idx: dict = field(default_factory=dict)
    point_inputs: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    mask_inputs: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    outputs: dict[int, ObjectMemory] = field(default_factory=dict)
    temp_outputs: dict[int, ObjectMemory] = field(default_factory=dict)
    frames_tracked: dict[int, dict[int, bool]] = field(default_factory=dict)  # frame → tracked in reverse
    cached_features: tuple[int, FrameFeatures] | None = None
    maskmem_pos_enc: torch.Tensor | None = None  # [1, mem_dim, h, w], the same for every frame


class VideoPredictor:
    """Interactive video segmentation: prompts on any frame for several objects, then propagation."""

    def __init__(self, model: SAM2, fill_hole_area: int = 8, offload_state_to_cpu: bool = True):
        """
        Args:
            fill_hole_area: fill background holes of up to this many low-res pixels in each frame's
                mask (0: off).
            offload_state_to_cpu: keep per-frame outputs on the CPU (moved to the model's device
                when attended to).
        """
        self.model = model
        self.fill_hole_area = fill_hole_area
        self.offload_state_to_cpu = offload_state_to_cpu

    @property
    def image_size(self) -> int:
        return self.model.image_size

    # ---- session -------------------------------------------------------------------------------

    @torch.inference_mode()
    def init_state(self, video_path, offload_state_to_cpu: bool | None = None, **_official_only) -> VideoState:
        """Open a video (a folder of JPEG frames or an mp4) without decoding its frames.

        ``offload_video_to_cpu`` and ``async_loading_frames`` of the official API are accepted and
        ignored: frames always stay on the CPU and are read when needed.
        """
        from unveil.datasets.sam2_frames import SAM2Frames

        frames = SAM2Frames(video_path, self.image_size, IMAGE_MEAN, IMAGE_STD)
        offload = self.offload_state_to_cpu if offload_state_to_cpu is None else offload_state_to_cpu
        device = self.model.device
        return VideoState(
            frames=frames,
            num_frames=len(frames),
            video_height=frames.video_height,
            video_width=frames.video_width,
            device=device,
            storage_device=torch.device("cpu") if offload else device,
        )

    @torch.inference_mode()
    def reset_state(self, state: VideoState) -> None:
        """Forget every object, prompt and result (the video stays open)."""
        for table in (state.point_inputs, state.mask_inputs, state.outputs, state.temp_outputs, state.frames_tracked):
            table.clear()
        state.obj_ids.clear()
        state.obj_id_to_idx.clear()

    def _obj_idx(self, state: VideoState, obj_id) -> int:
        if obj_id not in state.obj_id_to_idx:
            idx = len(state.obj_id_to_idx)
            state.obj_id_to_idx[obj_id] = idx
            state.obj_ids.append(obj_id)
            state.point_inputs[idx], state.mask_inputs[idx] = {}, {}
            state.outputs[idx], state.temp_outputs[idx] = ObjectMemory(), ObjectMemory()
            state.frames_tracked[idx] = {}
        return state.obj_id_to_idx[obj_id]

    # ---- prompts -------------------------------------------------------------------------------

    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: VideoState,
        frame_idx: int,
        obj_id,
        points=None,
        labels=None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box=None,
    ):
        """Clicks (points [N, 2] (x, y), labels [N]: 1 foreground, 0 background) and/or a box [4]
        XYXY on a frame for one object.

        Returns:
            (frame_idx, obj_ids, masks [objects, 1, H, W] logits at the video's size).
        """
        state = inference_state
        obj = self._obj_idx(state, obj_id)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        points = torch.zeros(0, 2) if points is None else torch.as_tensor(points, dtype=torch.float32)
        labels = torch.zeros(0, dtype=torch.int32) if labels is None else torch.as_tensor(labels, dtype=torch.int32)
        points = points.reshape(1, -1, 2)
        labels = labels.reshape(1, -1)
        if box is not None:
            if not clear_old_points:
                raise ValueError("a box must come first: add it with clear_old_points=True")
            # the box enters as two labelled corners, before the clicks
            points = torch.cat([torch.as_tensor(box, dtype=torch.float32).reshape(1, 2, 2), points], dim=1)
            labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labels], dim=1)
        if normalize_coords:
            points = points / torch.tensor([state.video_width, state.video_height])
        points = (points * self.image_size).to(state.device)
        labels = labels.to(state.device)
        old = state.point_inputs[obj].get(frame_idx) if not clear_old_points else None
        if old is not None:
            points, labels = torch.cat([old[0], points], dim=1), torch.cat([old[1], labels], dim=1)
        state.point_inputs[obj][frame_idx] = (points, labels)
        state.mask_inputs[obj].pop(frame_idx, None)
        return self._prompted(state, obj, frame_idx, (points, labels), None)

    @torch.inference_mode()
    def add_new_mask(self, inference_state: VideoState, frame_idx: int, obj_id, mask):
        """A binary mask [H, W] on a frame for one object; returns as :meth:`add_new_points_or_box`."""
        state = inference_state
        obj = self._obj_idx(state, obj_id)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 2:
            raise ValueError(f"add_new_mask takes an [H, W] mask, got shape {tuple(mask.shape)}")
        mask = mask[None, None].float().to(state.device)
        if mask.shape[-2:] != (self.image_size, self.image_size):
            mask = F.interpolate(mask, (self.image_size, self.image_size), mode="bilinear", antialias=True)
            mask = (mask >= 0.5).float()
        state.mask_inputs[obj][frame_idx] = mask
        state.point_inputs[obj].pop(frame_idx, None)
        return self._prompted(state, obj, frame_idx, None, mask)

    def _prompted(self, state: VideoState, obj: int, frame_idx: int, points, mask):
        tracked = state.frames_tracked[obj]
        is_init_cond_frame = frame_idx not in tracked
        reverse = False if is_init_cond_frame else tracked[frame_idx]
        # a correction on a tracked frame stays a tracked (non-conditioning) frame, as in SAM 2
        is_cond = is_init_cond_frame
        temp = state.temp_outputs[obj].cond if is_cond else state.temp_outputs[obj].non_cond
        prev_logits = None
        if points is not None:
            prev = temp.get(frame_idx) or state.outputs[obj].cond.get(frame_idx) or state.outputs[obj].non_cond.get(frame_idx)
            if prev is not None:
                prev_logits = prev.pred_masks.to(state.device).clamp(-32.0, 32.0)
        out, _ = self._run_frame(
            state, obj, frame_idx, is_init_cond_frame, points, mask, reverse, run_mem_encoder=False, prev_logits=prev_logits
        )
        temp[frame_idx] = out
        return frame_idx, list(state.obj_ids), self._consolidate(state, frame_idx, is_cond)

    def _consolidate(self, state: VideoState, frame_idx: int, is_cond: bool) -> torch.Tensor:
        """[objects, 1, H, W] logits of every object on a frame after a prompt (NO_OBJ_SCORE where
        an object has no output there yet)."""
        size = (state.video_height, state.video_width)
        masks = torch.full((len(state.obj_ids), 1, *size), NO_OBJ_SCORE, device=state.device)
        for obj in range(len(state.obj_ids)):
            temp = state.temp_outputs[obj].cond if is_cond else state.temp_outputs[obj].non_cond
            out = temp.get(frame_idx) or state.outputs[obj].cond.get(frame_idx) or state.outputs[obj].non_cond.get(frame_idx)
            if out is not None:
                masks[obj : obj + 1] = F.interpolate(out.pred_masks.to(state.device), size, mode="bilinear")
        return masks

    # ---- tracking ------------------------------------------------------------------------------

    def _features(self, state: VideoState, frame_idx: int) -> FrameFeatures:
        """The frame's image features, computed once per visit (only the latest frame is cached)."""
        if state.cached_features is None or state.cached_features[0] != frame_idx:
            image = state.frames[frame_idx].to(state.device).float().unsqueeze(0)
            state.cached_features = (frame_idx, self.model.frame_features(image))
        return state.cached_features[1]

    def _store(self, state: VideoState, out: FrameOutput) -> FrameOutput:
        """The compact copy kept in the session: bfloat16 memory (as the official predictor keeps it)
        on the storage device, and one shared memory position encoding."""
        storage = state.storage_device
        if out.maskmem_features is not None:
            out.maskmem_features = out.maskmem_features.to(torch.bfloat16).to(storage)
            if state.maskmem_pos_enc is None:
                state.maskmem_pos_enc = out.maskmem_pos_enc[:1].clone()
            out.maskmem_pos_enc = state.maskmem_pos_enc.expand(out.maskmem_features.shape[0], -1, -1, -1)
        out.pred_masks = out.pred_masks.to(storage)
        return out

    def _run_frame(
        self, state, obj, frame_idx, is_init_cond_frame, points, mask, reverse, run_mem_encoder, prev_logits=None
    ) -> tuple[FrameOutput, torch.Tensor]:
        frame = self._features(state, frame_idx)
        out, _ = self.model.track_step(
            frame_idx,
            is_init_cond_frame,
            frame,
            state.outputs[obj],
            state.num_frames,
            points=points,
            mask_inputs=mask,
            reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_mask_logits=prev_logits,
        )
        if self.fill_hole_area > 0:
            out.pred_masks = fill_holes(out.pred_masks, self.fill_hole_area)
        pred_masks = out.pred_masks
        return self._store(state, out), pred_masks

    def _preflight(self, state: VideoState) -> None:
        """Encode the memories of prompted frames and move them from the temporary outputs."""
        if not state.obj_ids:
            raise RuntimeError("No input points or masks are provided for any object; please add inputs first.")
        for obj in range(len(state.obj_ids)):
            memory, temp = state.outputs[obj], state.temp_outputs[obj]
            for is_cond in (False, True):
                pending = temp.cond if is_cond else temp.non_cond
                for frame_idx, out in pending.items():
                    if out.maskmem_features is None:
                        high_res = F.interpolate(
                            out.pred_masks.to(state.device), (self.image_size, self.image_size), mode="bilinear"
                        )
                        out.maskmem_features, out.maskmem_pos_enc = self.model.encode_memory(
                            self._features(state, frame_idx), high_res, out.object_score, from_points=True
                        )
                        self._store(state, out)
                    (memory.cond if is_cond else memory.non_cond)[frame_idx] = out
                pending.clear()
            if not memory.cond:
                raise RuntimeError(
                    f"No input points or masks are provided for object id {state.obj_ids[obj]}; please add inputs first."
                )
            for frame_idx in memory.cond:
                memory.non_cond.pop(frame_idx, None)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: VideoState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list, torch.Tensor]]:
        """Track every object from ``start_frame_idx`` (default: the first prompted frame) forward,
        or backward with ``reverse``; yields (frame_idx, obj_ids, masks [objects, 1, H, W] logits)."""
        state = inference_state
        self._preflight(state)
        num_frames = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(t for memory in state.outputs.values() for t in memory.cond)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end = min(start_frame_idx + max_frame_num_to_track, num_frames - 1)
            order = range(start_frame_idx, end + 1)
        size = (state.video_height, state.video_width)
        for frame_idx in order:
            per_object = []
            for obj in range(len(state.obj_ids)):
                memory = state.outputs[obj]
                if frame_idx in memory.cond:
                    masks = memory.cond[frame_idx].pred_masks.to(state.device)
                else:
                    out, masks = self._run_frame(state, obj, frame_idx, False, None, None, reverse, run_mem_encoder=True)
                    memory.non_cond[frame_idx] = out
                state.frames_tracked[obj][frame_idx] = reverse
                per_object.append(masks)
            masks = torch.cat(per_object, dim=0)  # [objects, 1, S/4, S/4]
            if masks.shape[-2:] != size:
                masks = F.interpolate(masks, size, mode="bilinear")
            yield frame_idx, list(state.obj_ids), masks
