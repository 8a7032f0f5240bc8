"""The key-point evaluation runner and its table, on tiny synthetic pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detkd.data.pairs import ImagePair, synthetic_pairs
from detkd.evaluation.keypoints import (
    METRIC_KEYS,
    descriptor_agreement,
    KeypointEvaluation,
    evaluate_keypoint_models,
    format_metrics_table,
    pair_features,
)
from detkd.geometry.homography import warp_points
from detkd.models.superpoint import create_model

SIZE = (64, 96)


def tiny_pairs(count: int = 2) -> list[ImagePair]:
    """One pair per distinct noise image, so that every image identifies its pair."""
    rng = np.random.default_rng(0)
    images = [(f"noise{i}", rng.random((SIZE[0], SIZE[1]), dtype=np.float32)) for i in range(count)]
    return synthetic_pairs(images, pairs_per_image=1, size=SIZE, seed=0)


class OracleModel:
    """Returns the same points in image 0 and their exact warps in image 1, with identical
    distinct descriptors: a perfect detector and descriptor."""

    def __init__(self, pairs: list[ImagePair], num_points: int = 30) -> None:
        generator = torch.Generator().manual_seed(0)
        height, width = SIZE
        self.points0 = torch.rand(num_points, 2, generator=generator, dtype=torch.float64)
        self.points0 = self.points0 * torch.tensor([width - 17.0, height - 17.0]) + 8
        self.descriptors = torch.nn.functional.normalize(torch.randn(num_points, 16, generator=generator), dim=-1)
        self.pairs = pairs
        self.max_keypoints_seen: list[int] = []

    def extract(self, image: torch.Tensor, max_keypoints: int = -1) -> dict[str, list[torch.Tensor]]:
        self.max_keypoints_seen.append(max_keypoints)
        for pair in self.pairs:
            visible = self.visible(pair)
            if torch.equal(image[0], pair.image0):
                points = self.points0[visible]
                break
            if torch.equal(image[0], pair.image1):
                points = warp_points(self.points0, pair.homography)[visible]
                break
        else:
            raise AssertionError("image not from the pairs")
        return {"keypoints": [points.float()], "descriptors": [self.descriptors[visible]],
                "scores": [torch.ones(len(points))]}

    def visible(self, pair: ImagePair) -> torch.Tensor:
        """Points whose warp lands well inside image 1 (a real detector sees only those)."""
        warped = warp_points(self.points0, pair.homography)
        height, width = SIZE
        return (warped[:, 0] > 4) & (warped[:, 1] > 4) & (warped[:, 0] < width - 5) & (warped[:, 1] < height - 5)


def test_oracle_scores_perfectly():
    pairs = tiny_pairs()
    oracle = OracleModel(pairs)
    result = evaluate_keypoint_models({"oracle": oracle}, pairs, max_keypoints=30, progress=False)
    summary = result["oracle"]
    assert summary["repeatability"] == 1.0
    assert summary["localization_error"] < 1e-4  # float32 key points
    assert summary["mma@1"] == 1.0
    assert summary["homography_accuracy@1"] == 1.0 and summary["true_match_homography_accuracy@3"] == 1.0
    assert summary["matching_score"] == 1.0 and summary["matching_recall"] == 1.0 and summary["f1"] == 1.0
    visible = [int(oracle.visible(pair).sum()) for pair in pairs]
    assert min(visible) >= 10  # the test means something
    assert summary["num_keypoints"] == summary["num_matches"] == pytest.approx(np.mean(visible))
    assert set(oracle.max_keypoints_seen) == {30}
    example = result.examples["oracle"]
    assert example.pair_name == pairs[0].name and bool(example.correct.all())
    assert example.image0 is pairs[0].image0 and example.image1 is pairs[0].image1
    assert example.matches.shape == (visible[0], 2) and example.homography_estimate is not None


class ScrambledOracle(OracleModel):
    """The oracle's exact points, but view 1's descriptors belong to other points: every
    descriptor match is wrong while the points themselves are perfect."""

    def extract(self, image: torch.Tensor, max_keypoints: int = -1) -> dict[str, list[torch.Tensor]]:
        out = super().extract(image, max_keypoints)
        if any(torch.equal(image[0], pair.image1) for pair in self.pairs):
            out["descriptors"] = [out["descriptors"][0].roll(1, dims=0)]
        return out


def test_true_match_homography_accuracy_needs_only_the_points():
    pairs = tiny_pairs()
    summary = evaluate_keypoint_models({"scrambled": ScrambledOracle(pairs)}, pairs, progress=False)["scrambled"]
    assert summary["mma@1"] == 0.0  # each point matched to the next one in the list: none lands on its own
    assert summary["homography_accuracy@5"] == 0.0
    assert summary["true_match_homography_accuracy@3"] == 1.0


def test_tiny_superpoint_keys_ranges_and_determinism():
    torch.manual_seed(0)
    model = create_model("tiny")
    model.train()
    pairs = tiny_pairs()
    result = evaluate_keypoint_models(
        {"teacher": model, "student": model}, pairs, max_keypoints=64, progress=False
    )
    assert isinstance(result, KeypointEvaluation) and list(result) == ["teacher", "student"]
    assert model.training  # mode restored
    for summary in result.values():
        assert list(summary) == list(METRIC_KEYS)
        for key, value in summary.items():
            if key in ("localization_error", "num_keypoints", "num_matches"):
                assert math.isnan(value) or value >= 0
            else:
                assert 0.0 <= value <= 1.0, key
        assert 0 < summary["num_keypoints"] <= 64
        assert summary["localization_error"] <= 3 or math.isnan(summary["localization_error"])
    teacher, student = result["teacher"], result["student"]
    assert all(
        teacher[k] == student[k] or (math.isnan(teacher[k]) and math.isnan(student[k])) for k in METRIC_KEYS
    )
    assert len(result.per_pair) == 4 and result.per_pair[0]["kind"] == "synthetic"
    assert set(result.summary_for("synthetic")) == {"teacher", "student"}
    with pytest.raises(ValueError, match="No pair of kind"):
        result.summary_for("viewpoint")


def test_format_metrics_table():
    teacher = {key: 0.5 for key in METRIC_KEYS} | {"num_keypoints": 812.4, "localization_error": 1.234}
    student = dict(teacher, **{"mma@3": 0.25, "homography_accuracy@3": 0.5, "localization_error": math.nan})
    table = format_metrics_table({"teacher": teacher, "student": student})
    lines = table.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # aligned
    assert lines[0].startswith("| model") and "MMA@3 % of teacher" in lines[0] and "HA@3" in lines[0]
    assert lines[2].startswith("| teacher") and lines[3].startswith("| student")
    assert "1.23" in lines[2] and "812" in lines[2] and "100.0%" in lines[2]
    assert "50.0%" in lines[3] and "n/a" in lines[3]
    single = format_metrics_table({"teacher": teacher}, columns=["mma@1", "f1"])
    assert "% of" not in single and "mma@1" in single
    with pytest.raises(ValueError, match="Unknown metric"):
        format_metrics_table({"teacher": teacher}, columns=["nope"])


def test_descriptor_agreement_is_one_for_the_teacher_itself_and_minus_one_for_negated_descriptors():
    import copy

    torch.manual_seed(0)
    teacher = create_model("tiny").eval()
    images = [torch.rand(1, 30, 45, generator=torch.Generator().manual_seed(i)) for i in range(2)]  # not whole cells
    teacher.conf["detection_threshold"] = 0.0  # a random network's heatmap is flat: keep its points
    assert descriptor_agreement(teacher, teacher, images, max_keypoints=50) == pytest.approx(1.0, abs=1e-5)
    negated = copy.deepcopy(teacher)
    last = negated.descriptor[-1].conv  # no BatchNorm in tiny: negating the last conv negates every descriptor
    with torch.no_grad():
        last.weight.neg_()
        last.bias.neg_()
    assert descriptor_agreement(negated, teacher, images, max_keypoints=50) == pytest.approx(-1.0, abs=1e-5)
    teacher.conf["detection_threshold"] = 2.0  # above every probability: no points, no agreement
    assert math.isnan(descriptor_agreement(teacher, teacher, images))


def test_one_model_under_two_names_extracts_each_image_once():
    """Two rows of one model object (the same points before two matchers) share its features: two extracts per
    pair, not four, and both rows score what the model alone scores."""
    pairs = tiny_pairs()
    oracle = OracleModel(pairs)
    alone = evaluate_keypoint_models({"oracle": oracle}, pairs, max_keypoints=30, progress=False)["oracle"]
    oracle.max_keypoints_seen.clear()
    result = evaluate_keypoint_models({"a": oracle, "b": oracle}, pairs, max_keypoints=30, progress=False)
    assert len(oracle.max_keypoints_seen) == 2 * len(pairs)
    assert result["a"] == alone and result["b"] == alone
    features = pair_features({"a": oracle, "b": oracle}, pairs[0], 30, "cpu")
    assert features["a"] is features["b"] and len(oracle.max_keypoints_seen) == 2 * len(pairs) + 2
