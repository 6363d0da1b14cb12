"""kNN evaluation (dinov2's protocol): the vote against a direct computation, chunking, DDP gathers, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from unveil.finetune.knn import extract_features, knn_accuracy, knn_predict, pooled_features

HERE = Path(__file__).parent


def reference_knn(train, train_labels, queries, num_classes, k, temperature):
    """The vote written out directly: one full similarity matrix, a loop over queries."""
    scores = torch.zeros(queries.shape[0], num_classes)
    similarity = queries @ train.t()
    for row in range(queries.shape[0]):
        order = sorted(range(train.shape[0]), key=lambda j: -similarity[row, j].item())[:k]
        for j in order:
            scores[row, train_labels[j]] += torch.exp(similarity[row, j] / temperature)
    return scores


def random_features(count, dim=16, classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(count, dim, generator=generator), dim=1)
    labels = torch.randint(0, classes, (count,), generator=generator)
    return features, labels


@pytest.mark.parametrize("chunk_size", [3, 1000])
def test_vote_matches_direct_computation(chunk_size):
    train, train_labels = random_features(60)
    queries, _ = random_features(17, seed=1)
    scores = knn_predict(
        train, train_labels, queries, 5, ks=(1, 10, 100), temperature=0.07, chunk_size=chunk_size
    )
    for k in (1, 10, 100):  # k = 100 > 60 training samples: all of them vote
        expected = reference_knn(train, train_labels, queries, 5, min(k, 60), 0.07)
        torch.testing.assert_close(scores[k], expected, rtol=1e-5, atol=1e-6)


def test_hand_computed_vote():
    # query (1, 0); neighbours at cosine 1.0 (class 0), 0.8 (class 1), 0.6 (class 1)
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    scores = knn_predict(train, labels, torch.tensor([[1.0, 0.0]]), 2, ks=(1, 3), temperature=0.1)
    assert scores[1].argmax().item() == 0
    e = torch.exp(torch.tensor([10.0, 8.0, 6.0]))
    torch.testing.assert_close(scores[3][0], torch.stack([e[0], e[1] + e[2]]))
    assert scores[3].argmax().item() == 0  # e^10 > e^8 + e^6
    hot = knn_predict(train, labels, torch.tensor([[1.0, 0.0]]), 2, ks=(3,), temperature=10.0)
    assert hot[3].argmax().item() == 1  # at a high temperature the two class-1 votes win


def test_accuracy_separable_and_bad_input():
    centres = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    labels = torch.arange(4).repeat(10)
    features = F.normalize(centres[labels] + 0.05 * torch.randn(40, 8), dim=1)
    result = knn_accuracy(features, labels, features[:8], labels[:8], 4, ks=(10, 20))
    assert result == {10: 1.0, 20: 1.0}
    with pytest.raises(ValueError, match="training labels"):
        knn_predict(features, labels, features, 3)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(features, labels, features, 4, temperature=0.0)


def test_extract_features_of_a_hiera_backbone():
    from unveil.models.hiera import Hiera

    torch.manual_seed(0)
    model = Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), num_classes=0)
    images = torch.randn(6, 3, 64, 64)
    batches = [
        {"image": images[:4], "label": torch.tensor([0, 1, 2, 3])},
        {"image": images[4:], "label": torch.tensor([1, 0])},
    ]
    model.train()
    features, labels = extract_features(model, batches)
    assert model.training  # mode restored
    assert features.shape == (6, model.blocks[-1].dim_out) and labels.tolist() == [0, 1, 2, 3, 1, 0]
    torch.testing.assert_close(features.norm(dim=1), torch.ones(6))
    model.eval()
    with torch.no_grad():
        expected = F.normalize(pooled_features(model, images), dim=1)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_ddp_gathers_give_the_single_process_result(tmp_path):
    """Two gloo processes, each holding an uneven share of the training set and of the queries."""
    result = subprocess.run(
        [sys.executable, str(HERE / "knn_ddp_worker.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ddp knn ok" in result.stdout


def unveil(*args, cwd):
    script = Path(sys.executable).with_name("unveil")
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2"},
    )


@pytest.mark.slow  # about a minute: three CLI runs
def test_unveil_knn_command_on_an_export(tmp_path):
    """``unveil knn EXPORT --data DIR`` (the README's command) on a tiny exported Hiera, and its random-init row."""
    import json

    from unveil.common.checkpoints import architecture_of, save_backbone
    from unveil.datasets.synth import make_image_folder
    from unveil.models.hiera import Hiera

    make_image_folder(
        tmp_path / "data" / "shapes",
        num_classes=3,
        train_per_class=5,
        val_per_class=2,
        size=64,
        progress=False,
    )
    torch.manual_seed(1)
    model = Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), num_classes=0)
    save_backbone(tmp_path / "tiny.pt", model.state_dict(), architecture_of(model))
    result = unveil(
        "knn",
        "tiny.pt",
        "--data",
        "data/shapes",
        "--input-size",
        "64",
        "--k",
        "1",
        "3",
        "20",
        "--json",
        "knn.json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "15 train -> 6 val, 3 classes" in result.stdout and "k=20" in result.stdout
    saved = json.loads((tmp_path / "knn.json").read_text())
    assert set(saved["top1"]) == {"1", "3", "20"} and all(0 <= v <= 1 for v in saved["top1"].values())

    # the same numbers from Python: the command adds nothing of its own
    from torch.utils.data import DataLoader
    from unveil.datasets.image import ImageFolderDataset, image_eval_transform

    root, transform = tmp_path / "data" / "shapes", image_eval_transform(64)
    train = extract_features(model, DataLoader(ImageFolderDataset(root, "train", transform), batch_size=4))
    val = extract_features(model, DataLoader(ImageFolderDataset(root, "val", transform), batch_size=4))
    expected = knn_accuracy(*train, *val, 3, ks=(1, 3, 20))
    assert {int(k): v for k, v in saved["top1"].items()} == pytest.approx(expected)

    random = unveil(
        "knn", "tiny.pt", "--data", "data/shapes", "--input-size", "64", "--random-init", cwd=tmp_path
    )
    assert random.returncode == 0 and "random init" in random.stdout

    # a pretraining checkpoint (as MAEPretrainModule saves it: model.* weights and the recorded architecture)
    from unveil.common.checkpoints import ARCHITECTURE_KEY
    from unveil.models import MaskedAutoencoderHiera

    mae = MaskedAutoencoderHiera(
        input_size=(64, 64),
        embed_dim=16,
        num_heads=1,
        stages=(1, 1, 1, 1),
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=1,
    )
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in mae.state_dict().items()},
            "global_step": 3,
            ARCHITECTURE_KEY: architecture_of(mae).as_dict(),
        },
        tmp_path / "last.ckpt",
    )
    from_ckpt = unveil(
        "knn", "last.ckpt", "--data", "data/shapes", "--input-size", "64", "--k", "20", cwd=tmp_path
    )
    assert from_ckpt.returncode == 0, from_ckpt.stderr[-2000:]
    assert "'last.ckpt'" in from_ckpt.stdout and "k=20" in from_ckpt.stdout

    missing = unveil("knn", "nothing.pt", "--data", "data/shapes", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nothing.pt" in missing.stderr
    no_data = unveil("knn", "tiny.pt", "--data", "elsewhere", cwd=tmp_path)
    assert no_data.returncode == 2 and "unveil synth images --out elsewhere" in no_data.stderr
