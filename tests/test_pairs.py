"""Evaluation image pairs: synthetic (seeded) and HPatches-format folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detkd.data.pairs import (
    ImagePair,
    builtin_heldout_pairs,
    hpatches_pairs,
    resize_and_crop,
    synthetic_pairs,
    synthetic_pairs_from_folder,
)
from detkd.geometry.homography import warp_points

SIZE = (64, 96)


def random_images(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    return [
        ("grey", rng.random((80, 120), dtype=np.float32)),
        ("colour", rng.random((50, 60, 3), dtype=np.float32)),
    ]


# ---------------------------------------------------------------------- synthetic
def test_synthetic_pairs_shapes_and_determinism():
    images = random_images(np.random.default_rng(0))
    pairs = synthetic_pairs(images, pairs_per_image=2, size=SIZE, seed=3)
    assert [p.name for p in pairs] == ["grey/0", "grey/1", "colour/0", "colour/1"]
    for pair in pairs:
        assert pair.kind == "synthetic"
        assert pair.image0.shape == pair.image1.shape == (1, *SIZE)
        assert pair.image0.dtype == pair.image1.dtype == torch.float32
        assert pair.homography.shape == (3, 3) and pair.homography.dtype == torch.float64
        assert 0 <= pair.image1.min() and pair.image1.max() <= 1
        assert pair.shape0 == pair.shape1 == SIZE
    again = synthetic_pairs(images, pairs_per_image=2, size=SIZE, seed=3)
    for a, b in zip(pairs, again):
        assert torch.equal(a.image0, b.image0) and torch.equal(a.image1, b.image1)
        assert torch.equal(a.homography, b.homography)
    other = synthetic_pairs(images, pairs_per_image=2, size=SIZE, seed=4)
    assert not torch.equal(pairs[0].homography, other[0].homography)
    assert not torch.equal(pairs[0].homography, pairs[1].homography)
    # turning the illumination change off keeps the geometry
    plain = synthetic_pairs(images, pairs_per_image=2, size=SIZE, seed=3, photometric=False)
    assert all(torch.equal(a.homography, b.homography) for a, b in zip(pairs, plain))
    assert not torch.equal(pairs[0].image1, plain[0].image1)


def test_synthetic_homography_maps_image0_content_onto_image1():
    height, width = SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    blob_xy = np.array([40.0, 30.0])
    image = np.exp(-((xs - blob_xy[0]) ** 2 + (ys - blob_xy[1]) ** 2) / (2 * 2.0**2)).astype(np.float32)
    for pair in synthetic_pairs([("blob", image)], pairs_per_image=3, size=SIZE, seed=1, photometric=False):
        expected = warp_points(torch.from_numpy(blob_xy[None]), pair.homography)[0]
        peak = np.unravel_index(int(pair.image1[0].argmax()), SIZE)
        assert torch.allclose(torch.tensor([peak[1], peak[0]], dtype=torch.float64), expected, atol=1.0)


def test_resize_and_crop_covers_the_size():
    for shape in [(80, 120), (200, 90), (10, 10), (64, 96)]:
        assert resize_and_crop(np.zeros(shape, np.float32), SIZE).shape == SIZE


def test_synthetic_pairs_from_folder_skips_unreadable(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.jpg"):
        pairs = synthetic_pairs_from_folder(tmp_path, pairs_per_image=1, size=SIZE)
    assert [p.name for p in pairs] == ["a/0", "sub/b/0"]


def test_builtin_heldout_pairs():
    pairs = builtin_heldout_pairs(names=("coffee",), pairs_per_image=1, size=SIZE)
    assert len(pairs) == 1 and pairs[0].name == "coffee/0" and pairs[0].image0.shape == (1, *SIZE)


def test_image_pair_checks_shapes():
    with pytest.raises(ValueError, match=r"image0 must be \(1, H, W\)"):
        ImagePair("x", torch.zeros(3, 4, 4), torch.zeros(1, 4, 4), torch.eye(3), "synthetic")
    with pytest.raises(ValueError, match="kind"):
        ImagePair("x", torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.eye(3), "other")


# ---------------------------------------------------------------------- HPatches
SEQUENCE_SIZES = {"i_lamp": (40, 60), "v_wall": (48, 72)}  # (height, width) of image 1


def homography_for(k: int) -> np.ndarray:
    return np.array([[1.0 + 0.01 * k, 0.02, k], [-0.01, 1.0, -0.5 * k], [1e-4 * k, 0.0, 1.0]])


def make_hpatches(root, sizes=SEQUENCE_SIZES):
    rng = np.random.default_rng(0)
    for name, (height, width) in sizes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(1, 7):
            # later views a bit bigger: the rescaling differs between image 1 and image k
            shape = (height + 2 * (k - 1), width + 4 * (k - 1), 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{k}.ppm")
            if k > 1:
                np.savetxt(folder / f"H_1_{k}", homography_for(k))
    (root / "notes").mkdir()  # not a sequence: ignored
    return root


def test_hpatches_pairs_full_size(tmp_path):
    pairs = hpatches_pairs(make_hpatches(tmp_path), max_size=None)
    assert [p.name for p in pairs] == [f"{s}/1-{k}" for s in ("i_lamp", "v_wall") for k in range(2, 7)]
    assert [p.kind for p in pairs] == ["illumination"] * 5 + ["viewpoint"] * 5
    assert pairs[0].shape0 == (40, 60) and pairs[1].shape1 == (44, 68)  # image 3: +4 rows, +8 cols
    assert np.allclose(pairs[1].homography.numpy(), homography_for(3))
    assert pairs[0].image0 is pairs[4].image0  # image 1 is shared by its sequence's pairs
    only_v = hpatches_pairs(tmp_path, max_size=None, kinds=("viewpoint",))
    assert {p.kind for p in only_v} == {"viewpoint"}
    assert len(hpatches_pairs(tmp_path, max_size=None, exclude=("i_lamp",))) == 5


def test_hpatches_rescaled_homography_maps_rescaled_points(tmp_path):
    max_size = 32
    pairs = hpatches_pairs(make_hpatches(tmp_path), max_size=max_size)
    rng = np.random.default_rng(1)
    for pair in pairs:
        sequence, index = pair.name.split("/1-")
        height, width = SEQUENCE_SIZES[sequence]
        k = int(index)
        original0 = (height, width)
        original1 = (height + 2 * (k - 1), width + 4 * (k - 1))
        assert max(pair.shape0) == max_size and max(pair.shape1) == max_size
        points0 = torch.from_numpy(rng.uniform(0, 30, (10, 2)))
        points1 = warp_points(points0, torch.from_numpy(homography_for(k)))

        def rescale(points, old, new):  # pixel centres aligned: x' = (x + 0.5) * s - 0.5
            ratio = torch.tensor([new[1] / old[1], new[0] / old[0]], dtype=torch.float64)
            return (points + 0.5) * ratio - 0.5

        mapped = warp_points(rescale(points0, original0, pair.shape0), pair.homography)
        assert torch.allclose(mapped, rescale(points1, original1, pair.shape1), atol=1e-9)


def test_hpatches_errors_name_the_file(tmp_path):
    root = make_hpatches(tmp_path)
    (root / "v_wall" / "H_1_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"v_wall.*H_1_4"):
        hpatches_pairs(root)
    (root / "v_wall" / "H_1_4").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ValueError, match=r"Malformed homography file .*H_1_4"):
        hpatches_pairs(root)
    (root / "v_wall" / "H_1_4").write_text("1 0 0\n0 one 0\n0 0 1\n")
    with pytest.raises(ValueError, match=r"Malformed homography file .*H_1_4"):
        hpatches_pairs(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hpatches_pairs(tmp_path / "missing")
    with pytest.raises(ValueError, match="No HPatches sequence"):
        hpatches_pairs(root / "notes")
    with pytest.raises(ValueError, match="kinds"):
        hpatches_pairs(root, kinds=("x",))
