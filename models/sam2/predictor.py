"""``ImagePredictor``: the official ``SAM2ImagePredictor`` API on unveil's SAM 2.

    predictor = ImagePredictor(sam2_hiera_tiny())
    predictor.set_image(image)                      # HxWx3 uint8 RGB array, or a PIL image
    masks, ious, low_res = predictor.predict(point_coords=[[x, y]], point_labels=[1])

Shapes and meaning are the official ones: masks [C, H, W] (float 0 / 1, or logits with ``return_logits``)
at the image's size, ious [C], low-res logits [C, 256, 256] clamped to ±32 (C = 3 with
``multimask_output``, else 1; a leading batch dimension when several boxes are given at once).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from .model import SAM2
from .postprocess import fill_holes, remove_sprinkles

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "ImagePredictor", "to_model_input"]

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def to_model_input(image, size: int) -> torch.Tensor:
    """An HxWx3 uint8 array or PIL image → [3, size, size] float, resized (antialiased bilinear) and
    normalised as SAM 2 expects."""
    x = TF.to_tensor(image)  # [3, H, W] in [0, 1]
    x = TF.resize(x, [size, size], antialias=True)
    return TF.normalize(x, IMAGE_MEAN, IMAGE_STD)


class ImagePredictor:
    """Embeds an image once, then predicts masks for any number of prompts on it."""

    def __init__(self, model: SAM2, mask_threshold: float = 0.0, max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0):
        """
        Args:
            mask_threshold: logit above which a pixel is in the mask.
            max_hole_area, max_sprinkle_area: fill holes / remove islands up to this many low-res
                pixels (0: off, the official default).
        """
        self.model = model
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.reset_predictor()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_predictor(self) -> None:
        self._features = None
        self._orig_hw: list[tuple[int, int]] | None = None
        self._is_image_set = False
        self._is_batch = False

    @torch.no_grad()
    def set_image(self, image) -> None:
        """Embed one image: an HxWx3 RGB uint8 ``np.ndarray`` or a PIL image."""
        self.reset_predictor()
        if isinstance(image, np.ndarray):
            self._orig_hw = [tuple(image.shape[:2])]
        elif hasattr(image, "size") and hasattr(image, "mode"):  # PIL
            width, height = image.size
            self._orig_hw = [(height, width)]
        else:
            raise TypeError(f"set_image takes an np.ndarray or a PIL image, not {type(image).__name__}")
        batch = to_model_input(image, self.model.image_size)[None].to(self.device)
        self._set(batch)

    @torch.no_grad()
    def set_image_batch(self, images: list[np.ndarray]) -> None:
        """Embed several HxWx3 images; predict with :meth:`predict_batch`."""
        self.reset_predictor()
        self._orig_hw = [tuple(image.shape[:2]) for image in images]
        batch = torch.stack([to_model_input(image, self.model.image_size) for image in images]).to(self.device)
        self._set(batch)
        self._is_batch = True

    def _set(self, batch: torch.Tensor) -> None:
        embed, high_res = self.model.image_embeddings(batch)
        self._features = {"image_embed": embed, "high_res_feats": high_res}
        self._is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """[1, 256, 64, 64] embeddings of the current image."""
        self._need_image()
        return self._features["image_embed"]

    def _need_image(self) -> None:
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the current image.

        Args:
            point_coords: [N, 2] (x, y) pixels (or [B, N, 2]); point_labels: [N] 1 foreground, 0 background.
            box: [4] XYXY pixels, or [B, 4] for B objects at once.
            mask_input: [1, 256, 256] low-res logits from an earlier prediction.
            normalize_coords: coordinates are in the original image's pixels (False: already in
                the model's ``image_size`` frame).

        Returns:
            (masks [C, H, W], ious [C], low-res logits [C, 256, 256]) as numpy arrays.
        """
        self._need_image()
        masks, ious, low_res = self._predict_one(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords, 0
        )
        return masks, ious, low_res

    def predict_batch(
        self,
        point_coords_batch=None,
        point_labels_batch=None,
        box_batch=None,
        mask_input_batch=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ):
        """:meth:`predict` per image of :meth:`set_image_batch`; lists of its outputs."""
        self._need_image()
        outs = [[], [], []]
        prompts = (point_coords_batch, point_labels_batch, box_batch, mask_input_batch)
        for i in range(len(self._orig_hw)):
            picked = [None if seq is None else seq[i] for seq in prompts]
            result = self._predict_one(*picked, multimask_output, return_logits, normalize_coords, i)
            for out, value in zip(outs, result):
                out.append(value)
        return tuple(outs)

    @torch.no_grad()
    def _predict_one(self, point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize, index):
        coords = labels = boxes = mask = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied with point_coords")
            coords = self._to_model_frame(torch.as_tensor(point_coords, dtype=torch.float, device=self.device), normalize, index)
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)
            if coords.dim() == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            boxes = torch.as_tensor(box, dtype=torch.float, device=self.device).reshape(-1, 2, 2)
            boxes = self._to_model_frame(boxes, normalize, index)  # [B, 2, 2]
        if mask_input is not None:
            mask = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)
            if mask.dim() == 3:
                mask = mask[None]
        out = self.model.decode(
            self._features["image_embed"][index : index + 1],
            [x[index : index + 1] for x in self._features["high_res_feats"]],
            coords,
            labels,
            boxes,
            mask,
            multimask_output,
        )
        masks = self._postprocess(out.masks, self._orig_hw[index])  # [B, C, H, W] logits
        low_res = out.masks.clamp(-32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        # float arrays, as the official predictor returns them (binary masks as 0.0 / 1.0)
        as_np = lambda t: t.squeeze(0).float().cpu().numpy()
        return as_np(masks), as_np(out.iou), as_np(low_res)

    def _to_model_frame(self, coords: torch.Tensor, normalize: bool, index: int) -> torch.Tensor:
        """[..., 2] (x, y) in original pixels (or in [0, 1] with normalize False) → model input pixels."""
        if normalize:
            height, width = self._orig_hw[index]
            coords = coords / coords.new_tensor([width, height])
        return coords * self.model.image_size

    def _postprocess(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits [B, C, h, w] → [B, C, H, W] at the image's size, small holes and islands
        removed first when asked for."""
        masks = masks.float()
        if self.max_hole_area > 0:
            masks = fill_holes(masks, self.max_hole_area, self.mask_threshold, fill_value=self.mask_threshold + 10.0)
        if self.max_sprinkle_area > 0:
            masks = remove_sprinkles(masks, self.max_sprinkle_area, self.mask_threshold)
        return F.interpolate(masks, orig_hw, mode="bilinear", align_corners=False)
