"""OpenCV SIFT / ORB adapters with SuperPoint's extract API (detkd.evaluation.classical)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detkd.data.pairs import ImagePair
from detkd.evaluation import keypoint_metrics as km
from detkd.evaluation.classical import OpenCVFeatures, image_to_uint8, unpack_binary_descriptors
from detkd.evaluation.keypoints import evaluate_keypoint_models
from detkd.evaluation.matching import mutual_nearest_neighbours


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smoothed noise plus a checkerboard: ``(H, W)`` float32 in [0, 1], full of corners."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    yy, xx = np.mgrid[0:height, 0:width]
    board = ((yy // 12 + xx // 12) % 2).astype(np.float32)
    return np.clip(0.5 * noise + 0.4 * board + 0.05, 0, 1).astype(np.float32)


def _translated_pair(height: int = 96, width: int = 128, dx: int = 5, dy: int = 3) -> ImagePair:
    """Image 1 shows image 0 moved by ``(dx, dy)`` px: ``H`` is an exact translation."""
    big = _texture(height + 20, width + 20)
    image0 = big[10 : 10 + height, 10 : 10 + width]
    image1 = big[10 - dy : 10 - dy + height, 10 - dx : 10 - dx + width]
    homography = torch.tensor([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]], dtype=torch.float64)
    return ImagePair("texture/0", torch.from_numpy(image0)[None], torch.from_numpy(image1.copy())[None],
                     homography, "synthetic")


def test_sift_matches_a_translated_texture() -> None:
    pair = _translated_pair()
    sift = OpenCVFeatures("sift")
    out0 = sift.extract(pair.image0[None], max_keypoints=300)
    out1 = sift.extract(pair.image1[None], max_keypoints=300)
    k0, k1 = out0["keypoints"][0], out1["keypoints"][0]
    matches = mutual_nearest_neighbours(out0["descriptors"][0], out1["descriptors"][0])
    assert len(matches) >= 20
    correct = km.correct_matches(k0, k1, matches, pair.homography, 3.0)
    assert correct.float().mean() > 0.8
    # sub-pixel accuracy too: the precise upscale leaves no 0.25 px bias
    error = (k0[matches[correct, 0]] + torch.tensor([5.0, 3.0]) - k1[matches[correct, 1]]).norm(dim=1)
    assert error.median() < 0.5


def test_sift_keypoint_is_unbiased_on_a_blob() -> None:
    cx, cy = 60.3, 45.7
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float64)
    image = 0.2 + 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2))
    out = OpenCVFeatures("sift").extract(torch.from_numpy(image).float()[None, None], max_keypoints=-1)
    distance = (out["keypoints"][0] - torch.tensor([cx, cy])).norm(dim=1).min()
    assert distance < 0.1  # OpenCV's default upscale would put it 0.35 px away


def test_orb_bits_squared_l2_equals_hamming() -> None:
    a = np.array([[0b10110000, 0xFF, 0x00, 0x0F]], dtype=np.uint8)
    b = np.array([[0b10100001, 0x0F, 0x00, 0xF0]], dtype=np.uint8)
    # hand count: 10110000 ^ 10100001 = 00010001 (2), 0xF0 (4), 0 (0), 0xFF (8)
    assert cv2.norm(a, b, cv2.NORM_HAMMING) == 14
    bits_a, bits_b = unpack_binary_descriptors(a), unpack_binary_descriptors(b)
    assert bits_a.shape == (1, 32) and bits_a.dtype == torch.float32
    assert bits_a[0, :8].tolist() == [1, 0, 1, 1, 0, 0, 0, 0]  # most significant bit first
    assert float(((bits_a - bits_b) ** 2).sum()) == 14.0

    rng = np.random.default_rng(0)
    p, q = rng.integers(0, 256, (20, 32), dtype=np.uint8), rng.integers(0, 256, (30, 32), dtype=np.uint8)
    hamming = np.array([[cv2.norm(p[i : i + 1], q[j : j + 1], cv2.NORM_HAMMING) for j in range(30)] for i in range(20)])
    l2_squared = torch.cdist(unpack_binary_descriptors(p).double(), unpack_binary_descriptors(q).double()) ** 2
    assert torch.allclose(l2_squared, torch.from_numpy(hamming).double())


def test_unpack_rejects_float_descriptors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        unpack_binary_descriptors(np.zeros((2, 32), np.float32))


def test_orb_level_correction() -> None:
    """A level-1 ORB point is the level-0 point of the centre-aligned 1/1.2 image, mapped back
    to full-size pixels with ``x = s (p + 0.5) - 0.5``."""
    image = _texture(192, 240, seed=3)
    u8 = image_to_uint8(torch.from_numpy(image)[None, None])[0]
    out = OpenCVFeatures("orb", nlevels=2, fastThreshold=10).extract(torch.from_numpy(image)[None, None], max_keypoints=-1)
    s = 1.2
    small = cv2.resize(u8, (round(240 / s), round(192 / s)), interpolation=cv2.INTER_LINEAR_EXACT)
    level0 = cv2.ORB_create(nfeatures=100_000, nlevels=1, fastThreshold=10).detect(small, None)
    expected = torch.tensor([kp.pt for kp in level0]) * s + (s - 1) / 2
    found = out["keypoints"][0]
    distance = torch.cdist(expected.float(), found).min(dim=1).values
    assert len(expected) > 5 and (distance < 1e-3).float().mean() > 0.9


def test_extract_api_shapes_sorting_and_limits() -> None:
    images = torch.stack([torch.from_numpy(_texture(96, 128, seed=s))[None] for s in (1, 2)])
    for kind, dim in (("sift", 128), ("orb", 256)):
        features = OpenCVFeatures(kind)
        out = features.extract(images, max_keypoints=40)
        assert set(out) == {"keypoints", "scores", "descriptors"}
        assert len(out["keypoints"]) == 2
        for kp, sc, de in zip(out["keypoints"], out["scores"], out["descriptors"]):
            assert 0 < len(kp) <= 40 and kp.shape[1] == 2 and kp.dtype == torch.float32
            assert sc.shape == (len(kp),) and torch.all(sc[:-1] >= sc[1:])
            assert de.shape == (len(kp), dim) and de.dtype == torch.float32
            assert (kp[:, 0] >= -0.5).all() and (kp[:, 0] <= 127.5).all()
            assert (kp[:, 1] >= -0.5).all() and (kp[:, 1] <= 95.5).all()
        if kind == "sift":
            assert torch.allclose(out["descriptors"][0].norm(dim=1), torch.ones(len(out["descriptors"][0])))
        else:
            assert set(out["descriptors"][0].unique().tolist()) <= {0.0, 1.0}
    root = OpenCVFeatures("sift", root_sift=True).extract(images[:1], max_keypoints=10)["descriptors"][0]
    assert torch.allclose(root.norm(dim=1), torch.ones(len(root)), atol=1e-5)
    assert (root >= 0).all()


def test_blank_image_gives_empty_outputs() -> None:
    blank = torch.full((1, 1, 64, 80), 0.5)
    for kind, dim in (("sift", 128), ("orb", 256)):
        out = OpenCVFeatures(kind).extract(blank)
        assert out["keypoints"][0].shape == (0, 2)
        assert out["scores"][0].shape == (0,)
        assert out["descriptors"][0].shape == (0, dim)


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match="kind"):
        OpenCVFeatures("surf")
    with pytest.raises(ValueError, match="root_sift"):
        OpenCVFeatures("orb", root_sift=True)
    with pytest.raises(ValueError, match="max_keypoints"):
        OpenCVFeatures("sift", nfeatures=10)
    with pytest.raises(ValueError, match="SIFT"):
        OpenCVFeatures("sift", no_such_option=1)


def test_runs_in_the_evaluation_runner() -> None:
    pair = _translated_pair(128, 160)
    models = {"sift": OpenCVFeatures("sift").eval(), "orb": OpenCVFeatures("orb").to("cpu")}
    result = evaluate_keypoint_models(models, [pair], max_keypoints=200, progress=False)
    assert result["sift"]["mma@3"] > 0.8
    assert result["sift"]["homography_accuracy@3"] == 1.0
    assert 0 < result["orb"]["num_keypoints"] <= 200
