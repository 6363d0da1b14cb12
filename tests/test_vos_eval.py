"""Semi-supervised VOS evaluation (first-frame masks → propagation → J&F) on `unveil synth vos` videos."""

from pathlib import Path

import pytest
import torch
from unveil.datasets.synth_vos import make_vos_folder
from unveil.datasets.vos import VOSFolder
from unveil.finetune.vos_eval import evaluate_semi_supervised
from unveil.finetune.vos_metrics import sequence_scores


class _ReplayPredictor:
    """The official predictor API replaying given masks (the truth, or the truth moved), to check the
    plumbing: prompts on the right frame and objects, frames and objects matched back to the annotations."""

    def __init__(self, dataset: VOSFolder, shift: int):
        self.dataset, self.shift, self.prompts = dataset, shift, []

    def init_state(self, folder):
        index = [str(self.dataset.images / v) for v in self.dataset.videos].index(folder)
        _, _, ids, truth = self.dataset.video_annotations(index)
        return {"ids": [], "truth": dict(zip(ids, truth.unbind(1)))}

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        assert torch.equal(mask, state["truth"][obj_id][frame_idx])
        self.prompts.append((frame_idx, obj_id))
        state["ids"].append(obj_id)

    def propagate_in_video(self, state, start_frame_idx=None, max_frame_num_to_track=None):
        frames = next(iter(state["truth"].values())).shape[0]
        end = frames if max_frame_num_to_track is None else start_frame_idx + max_frame_num_to_track + 1
        for t in range(start_frame_idx, min(end, frames)):
            masks = torch.stack([torch.roll(state["truth"][i][t], self.shift, dims=-1) for i in state["ids"]])
            yield t, list(state["ids"]), masks[:, None].float() * 20 - 10

    def reset_state(self, state):
        state.clear()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_vos_folder(
        tmp_path_factory.mktemp("vos_eval"), train_videos=0, val_videos=2, frames=8, seed=3
    )


def test_replayed_truth_scores_one_and_shift_matches_the_metric(synth):
    dataset = VOSFolder(synth, split="val", train=False)
    perfect = _ReplayPredictor(dataset, shift=0)
    result = evaluate_semi_supervised(perfect, dataset)
    assert result["J"] == 1.0 and result["F"] == 1.0 and set(result["videos"]) == {"val_0000", "val_0001"}
    assert all(frame == 0 for frame, _ in perfect.prompts)
    shifted = evaluate_semi_supervised(_ReplayPredictor(dataset, shift=3), dataset, max_frames=5)
    expected_j, expected_f = [], []
    for index in range(2):
        _, _, _, truth = dataset.video_annotations(index)
        j, f = sequence_scores(torch.roll(truth[:5], 3, dims=-1), truth[:5])
        expected_j += j.tolist()
        expected_f += f.tolist()
    assert shifted["J"] == pytest.approx(sum(expected_j) / len(expected_j))
    assert shifted["F"] == pytest.approx(sum(expected_f) / len(expected_f))
    assert shifted["J&F"] < 0.9


@pytest.mark.slow  # ~20 s on 2 cores: a tiny SAM 2 tracking 3 frames
def test_unveil_video_predictor_runs_the_protocol(tmp_path):
    from unveil.models.sam2 import SAM2, SAM2Config, VideoPredictor

    root = make_vos_folder(tmp_path, train_videos=0, val_videos=1, frames=8, min_objects=1, max_objects=1)
    model = SAM2(
        SAM2Config(trunk="tiny", image_size=128)
    ).eval()  # random weights: the plumbing, not the score
    result = evaluate_semi_supervised(
        VideoPredictor(model), VOSFolder(root, split="val", train=False), max_frames=3
    )
    scores = result["videos"]["val_0000"]
    assert len(scores["J"]) == 1 and 0.0 <= result["J&F"] <= 1.0
