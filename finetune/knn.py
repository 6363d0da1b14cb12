"""k-nearest-neighbour evaluation of frozen features, with dinov2's protocol.

Features are L2-normalised; a query's neighbours are the ``k`` training samples of highest cosine similarity;
each neighbour votes for its class with weight ``exp(similarity / temperature)`` (temperature 0.07), and the
class with the largest summed vote is the prediction. dinov2 reports k in {10, 20, 100, 200}.

The similarities are computed for one chunk of queries at a time against one rank's share of the training
features, so memory stays at ``chunk x (train samples / ranks)``: a million training images never make a
million-by-million matrix. Under DDP each rank extracts the features of its own share of the data (no padding,
no duplicates), the queries are gathered to every rank, each rank finds the top-k among its training shard,
and the per-rank top-k lists are gathered and merged. Every rank returns the same result.

    features, labels = extract_features(backbone, loader)        # [N, C] (L2-normalised), [N]
    result = knn_accuracy(train_features, train_labels, val_features, val_labels, num_classes=8)
    result[20]                                                   # top-1 with k = 20

Command line (any export or pretraining checkpoint, on an ImageNet-layout folder)::

    unveil knn runs/quickstart/version_0/checkpoints/last.ckpt --data data/shapes --input-size 128
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from unveil.common.distributed import gather_uneven

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
"""The neighbour counts dinov2 reports."""
DEFAULT_TEMPERATURE = 0.07
"""dinov2's vote temperature."""
INPUT_KEYS: tuple[str, ...] = ("video", "image", "fbank")
"""Batch keys that hold a backbone's input, in order of preference."""


# ------------------------------------------------------------------------------------------- features


def batch_input(batch: Mapping[str, torch.Tensor] | Sequence | torch.Tensor, input_key: str | None = None):
    """The backbone input of a batch: ``batch[input_key]``, else the first of ``INPUT_KEYS`` it holds (a
    ``(input, label)`` tuple gives its first element)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Sequence):
        return batch[0]
    if input_key is not None:
        return batch[input_key]
    for key in INPUT_KEYS:
        if key in batch:
            return batch[key]
    raise KeyError(f"batch has none of the input keys {INPUT_KEYS}; its keys: {sorted(batch)}")


def batch_labels(batch: Mapping[str, torch.Tensor] | Sequence) -> torch.Tensor:
    """The integer labels [B] of a batch (``batch["label"]``, or the second element of a tuple)."""
    if isinstance(batch, Sequence):
        return batch[1]
    if "label" not in batch:
        raise KeyError(f"batch has no 'label' key (its keys: {sorted(batch)}); kNN needs labelled data")
    return batch["label"]


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, C] features of a backbone: its final tokens mean-pooled, then a LayerNorm without parameters.

    The same for every backbone unveil makes: a Hiera (a classifier, an export, or the encoder of a
    ``MaskedAutoencoderHiera``, which has no final norm), and the MAViL ViT encoders. A pretrained backbone's
    final norm is not trained by MAE (an export leaves it at its initialisation), so a parameter-free one is
    used for all. A module without ``forward_features`` is used as it is (output flattened).
    """
    if not hasattr(backbone, "forward_features"):
        return backbone(x).flatten(1)
    tokens = backbone.forward_features(x)  # [B, N, C]
    pooled = tokens.mean(dim=1) if tokens.dim() == 3 else tokens.flatten(1)
    return F.layer_norm(pooled.float(), pooled.shape[-1:])


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    batches: Iterable,
    input_key: str | None = None,
    feature_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = pooled_features,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features [N, C] (float32) and labels [N] of every batch, in order, on ``device``.

    The backbone runs in eval mode (restored afterwards) without gradients. Only this process's batches are
    read: under DDP give each rank its own share and gather with ``gather_uneven`` (``knn_accuracy`` does).
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for batch in batches:
            x = batch_input(batch, input_key)
            if isinstance(x, Mapping):  # a backbone of several inputs (MAViL audio + video) takes them all
                x = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
            else:
                x = x.to(device)
            features.append(F.normalize(feature_fn(backbone, x).float(), dim=1))
            labels.append(batch_labels(batch).to(device))
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("no batches to extract features from")
    return torch.cat(features), torch.cat(labels).long()


# ---------------------------------------------------------------------------------------------- voting


def _topk_merge(similarity: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of ``similarity`` [Q, M] per row, with their labels: ([Q, k], [Q, k])."""
    values, index = similarity.topk(min(k, similarity.shape[1]), dim=1)
    if labels.dim() == 1:  # one label per column, shared by every row
        labels = labels.expand(similarity.shape[0], -1)
    return values, labels.gather(1, index)


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 256,
) -> dict[int, torch.Tensor]:
    """Class scores [Q, num_classes] of every query for each k in ``ks`` (dinov2's weighted vote).

    ``train_features`` [N_rank, C] and ``train_labels`` [N_rank] are this rank's share of the training set
    (all of it without DDP); ``query_features`` [Q, C] must be the same on every rank. Features are expected
    L2-normalised (``extract_features`` returns them so). A k larger than the whole training set uses all of it.
    Scores are summed weights: rows do not sum to one.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive neighbour counts, got {list(ks)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} training features but {train_labels.shape[0]} labels")
    if train_labels.numel() and (int(train_labels.max()) >= num_classes or int(train_labels.min()) < 0):
        raise ValueError(
            f"training labels must lie in [0, {num_classes}), got {train_labels.unique().tolist()}"
        )
    max_k = max(ks)
    train_t = train_features.t().contiguous()  # [C, N_rank]
    scores: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, query_features.shape[0], chunk_size):
        queries = query_features[start : start + chunk_size]  # [q, C]
        # this rank's candidates, then every rank's candidates merged into the global top max_k
        values, neighbour_labels = _topk_merge(queries @ train_t, train_labels, max_k)  # [q, k'] each
        values, neighbour_labels = gather_uneven(values.t()).t(), gather_uneven(neighbour_labels.t()).t()
        values, neighbour_labels = _topk_merge(values, neighbour_labels, max_k)  # sorted, largest first
        weights = (values / temperature).exp()  # [q, K]
        votes = F.one_hot(neighbour_labels, num_classes).to(weights.dtype) * weights.unsqueeze(
            -1
        )  # [q, K, classes]
        for k in ks:
            scores[k].append(votes[:, :k].sum(dim=1))
    return {k: torch.cat(parts) for k, parts in scores.items()}


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int = 256,
) -> dict[int, float]:
    """Top-1 accuracy for each k in ``ks``; every argument holds this rank's share only (the queries are
    gathered across ranks here, the training features stay where they are). Same result on every rank."""
    query_features, query_labels = gather_uneven(query_features), gather_uneven(query_labels)
    scores = knn_predict(
        train_features, train_labels, query_features, num_classes, ks, temperature, chunk_size
    )
    return {k: (score.argmax(dim=1) == query_labels).float().mean().item() for k, score in scores.items()}
