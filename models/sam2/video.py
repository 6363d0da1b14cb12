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

The public methods are the official ones: ``init_state``, ``add_new_points_or_box`` (and its old name
``add_new_points``), ``add_new_mask``, ``propagate_in_video_preflight``, ``propagate_in_video``,
``clear_all_prompts_in_frame``, ``remove_object`` and ``reset_state``, with the official options
``non_overlap_masks``, ``clear_non_cond_mem_around_input`` and ``add_all_frames_to_correct_as_cond``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

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

    # the official ``inference_state`` is a dict: its plain entries read the same here
    _OFFICIAL_KEYS: ClassVar[dict[str, str]] = {
        "images": "frames",
        "num_frames": "num_frames",
        "video_height": "video_height",
        "video_width": "video_width",
        "device": "device",
        "storage_device": "storage_device",
        "obj_ids": "obj_ids",
        "obj_id_to_idx": "obj_id_to_idx",
    }

    def __getitem__(self, key: str):
        if key not in self._OFFICIAL_KEYS:
            raise KeyError(f"VideoState has no official key '{key}' (it has {sorted(self._OFFICIAL_KEYS)})")
        return getattr(self, self._OFFICIAL_KEYS[key])


class VideoPredictor:
    """Interactive video segmentation: prompts on any frame for several objects, then propagation."""

    def __init__(
        self,
        model: SAM2,
        fill_hole_area: int = 8,
        offload_state_to_cpu: bool = True,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
    ):
        """
        Args:
            fill_hole_area: fill background holes of up to this many low-res pixels in each frame's
                mask (0: off).
            offload_state_to_cpu: keep per-frame outputs on the CPU (moved to the model's device
                when attended to).
            non_overlap_masks: in the returned masks, a pixel belongs to the highest-scoring object
                only (the others' logits there are capped at -10).
            clear_non_cond_mem_around_input: forget an object's tracked memories within
                ``num_maskmem`` frames (times the memory stride) of a frame it was prompted on, so
                that stale appearance does not compete with a correction.
            add_all_frames_to_correct_as_cond: a correction on a tracked frame makes it a
                conditioning frame (default: it stays a tracked frame, as in SAM 2).
        """
        self.model = model
        self.fill_hole_area = fill_hole_area
        self.offload_state_to_cpu = offload_state_to_cpu
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond

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

    def add_new_points(self, *args, **kwargs):
        """The official predictor's older name of :meth:`add_new_points_or_box`."""
        return self.add_new_points_or_box(*args, **kwargs)

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
        # a correction on a tracked frame stays a tracked (non-conditioning) frame unless asked otherwise
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
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
        return self._non_overlapping(masks)

    def _non_overlapping(self, masks: torch.Tensor) -> torch.Tensor:
        """[objects, 1, H, W] logits; with ``non_overlap_masks``, each pixel is kept only by its
        highest-scoring object (the others are capped at -10 there: sigmoid 4.5e-5)."""
        if not self.non_overlap_masks or masks.shape[0] == 1:
            return masks
        winner = masks.argmax(dim=0, keepdim=True)  # [1, 1, H, W]
        mine = winner == torch.arange(masks.shape[0], device=masks.device)[:, None, None, None]
        return torch.where(mine, masks, masks.clamp(max=-10.0))

    def _clear_memory_around(self, state: VideoState, obj: int, frame_idx: int) -> None:
        """Drop one object's tracked (non-conditioning) memories near a frame it was prompted on."""
        reach = self.model.tracking.memory_temporal_stride * self.model.tracking.num_maskmem
        non_cond = state.outputs[obj].non_cond
        for t in range(frame_idx - reach, frame_idx + reach + 1):
            non_cond.pop(t, None)

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

    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state: VideoState) -> None:
        """Encode the memories of prompted frames and move them from the temporary outputs (run by
        :meth:`propagate_in_video`)."""
        state = inference_state
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
                    if self.clear_non_cond_mem_around_input:
                        self._clear_memory_around(state, obj, frame_idx)
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
        self.propagate_in_video_preflight(state)
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
                    if self.clear_non_cond_mem_around_input:
                        self._clear_memory_around(state, obj, frame_idx)
                else:
                    out, masks = self._run_frame(state, obj, frame_idx, False, None, None, reverse, run_mem_encoder=True)
                    memory.non_cond[frame_idx] = out
                state.frames_tracked[obj][frame_idx] = reverse
                per_object.append(masks)
            masks = torch.cat(per_object, dim=0)  # [objects, 1, S/4, S/4]
            if masks.shape[-2:] != size:
                masks = F.interpolate(masks, size, mode="bilinear")
            yield frame_idx, list(state.obj_ids), self._non_overlapping(masks)

    # ---- editing -------------------------------------------------------------------------------

    @torch.inference_mode()
    def clear_all_prompts_in_frame(self, inference_state: VideoState, frame_idx: int, obj_id, need_output: bool = True):
        """Remove one object's clicks or mask on a frame. A conditioning frame it was becomes a
        tracked frame (its output kept as tracked memory), so a new prompt there starts afresh.

        Returns:
            as :meth:`add_new_points_or_box` (None with ``need_output`` False).
        """
        state = inference_state
        obj = self._obj_idx(state, obj_id)
        state.point_inputs[obj].pop(frame_idx, None)
        state.mask_inputs[obj].pop(frame_idx, None)
        state.temp_outputs[obj].cond.pop(frame_idx, None)
        state.temp_outputs[obj].non_cond.pop(frame_idx, None)
        out = state.outputs[obj].cond.pop(frame_idx, None)
        if out is not None:
            state.outputs[obj].non_cond[frame_idx] = out
            state.frames_tracked[obj].pop(frame_idx, None)
        if not need_output:
            return None
        return frame_idx, list(state.obj_ids), self._consolidate(state, frame_idx, self._any_temp_cond(state, frame_idx))

    def _any_temp_cond(self, state: VideoState, frame_idx: int) -> bool:
        return any(frame_idx in temp.cond for temp in state.temp_outputs.values())

    @torch.inference_mode()
    def remove_object(self, inference_state: VideoState, obj_id, strict: bool = False, need_output: bool = True):
        """Forget an object: its prompts, outputs and memories; the others keep their ids.

        Returns:
            (the remaining obj_ids, [(frame_idx, masks [objects, 1, H, W] logits)] for each frame the
            object had prompts on, as the remaining objects look there now).
        """
        state = inference_state
        if obj_id not in state.obj_id_to_idx:
            if not strict:
                return list(state.obj_ids), []
            raise RuntimeError(f"Cannot remove object id {obj_id} as it doesn't exist. All existing object ids: {state.obj_ids}.")
        if len(state.obj_ids) == 1:
            self.reset_state(state)
            return list(state.obj_ids), []
        removed = state.obj_id_to_idx[obj_id]
        prompted = sorted(set(state.point_inputs[removed]) | set(state.mask_inputs[removed]))
        for frame_idx in prompted:
            self.clear_all_prompts_in_frame(state, frame_idx, obj_id, need_output=False)
        kept = [idx for idx in range(len(state.obj_ids)) if idx != removed]
        for table in (state.point_inputs, state.mask_inputs, state.outputs, state.temp_outputs, state.frames_tracked):
            values = [table[idx] for idx in kept]
            table.clear()
            table.update(enumerate(values))
        remaining = [state.obj_ids[idx] for idx in kept]
        state.obj_ids[:] = remaining
        state.obj_id_to_idx.clear()
        state.obj_id_to_idx.update((oid, idx) for idx, oid in enumerate(remaining))
        updated = []
        if need_output:
            for frame_idx in prompted:
                updated.append((frame_idx, self._consolidate(state, frame_idx, self._any_temp_cond(state, frame_idx))))
        return list(state.obj_ids), updated
