"""detkd.Predictor: the same key points from a checkpoint and from its ONNX export, any image type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detkd import Predictor
from detkd.export.onnx import export_onnx, photo_batch
from detkd.models.pretrained import default_keypoint_teacher_path
from detkd.models.weights import load_keypoint_model, save_keypoint_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def same_points(a: np.ndarray, b: np.ndarray) -> bool:
    """Same key points in the same order; sub-pixel positions may differ in the last float bit
    (the refinement's convolutions round differently on differently padded inputs)."""
    return a.shape == b.shape and (a.size == 0 or float(np.abs(a - b).max()) <= 1e-4)



H, W = 64, 80


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The shipped teacher as a .pt file and as a checked ONNX export, and a real photo as PNG."""
    folder = tmp_path_factory.mktemp("predictor")
    model = load_keypoint_model(default_keypoint_teacher_path(), max_keypoints=200).eval()
    pt = save_keypoint_model(model, folder / "teacher.pt")
    onnx = export_onnx(model, folder / "teacher.onnx", H, W, verbose=False).path
    pixels = (photo_batch(["coffee"], 3, H, W)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    photo = folder / "coffee.png"
    Image.fromarray(pixels).save(photo)
    return {"model": model, "pt": pt, "onnx": onnx, "photo": photo, "pixels": pixels}


def test_checkpoint_and_onnx_predictors_agree_on_a_real_photo(files):
    from_pt = Predictor(files["pt"])(files["photo"])
    from_onnx = Predictor(files["onnx"])(files["photo"])
    assert set(from_pt) == {"keypoints", "scores", "descriptors"}
    assert 10 < len(from_pt["keypoints"]) <= 200
    assert same_points(from_pt["keypoints"], from_onnx["keypoints"])
    assert np.abs(from_pt["scores"] - from_onnx["scores"]).max() < 1e-4
    assert np.abs(from_pt["descriptors"] - from_onnx["descriptors"]).max() < 1e-4
    assert from_pt["descriptors"].shape == (len(from_pt["keypoints"]), 256)
    assert np.all(np.diff(from_pt["scores"]) <= 0)  # sorted by decreasing score


def test_every_image_type_gives_the_same_result(files):
    predictor = Predictor(files["onnx"])
    reference = predictor(files["photo"])
    pixels = files["pixels"]
    inputs = [
        Image.open(files["photo"]),  # PIL, RGB
        pixels,  # numpy (H, W, 3) uint8
        torch.from_numpy(pixels).permute(2, 0, 1),  # tensor (3, H, W) uint8
        np.asarray(Image.open(files["photo"]).convert("L")),  # numpy (H, W) uint8
        torch.from_numpy(np.asarray(Image.open(files["photo"]).convert("L")) / 255.0),  # tensor (H, W) float
    ]
    for image in inputs:
        out = predictor(image)
        assert same_points(out["keypoints"], reference["keypoints"]), type(image)
        assert np.abs(out["descriptors"] - reference["descriptors"]).max() < 1e-5
    batch = predictor([pixels, files["photo"]])
    assert isinstance(batch, list) and len(batch) == 2
    assert same_points(batch[1]["keypoints"], reference["keypoints"])


def test_pytorch_predictor_equals_extract_on_an_odd_size(files):
    """61x77 is padded to 64x80 like SuperPoint.extract does; points in the padding are dropped."""
    grey = photo_batch(["rocket"], 1, 61, 77)[0, 0]
    native = load_keypoint_model(files["pt"], input_scale=1.0).eval()
    out = Predictor(native)(grey.numpy())
    reference = native.extract(grey[None, None])
    assert same_points(out["keypoints"], reference["keypoints"][0].numpy())
    assert np.abs(out["descriptors"] - reference["descriptors"][0].numpy()).max() < 1e-6


def assert_predictor_matches_extract_but_at_the_border(model, height: int = 61, width: int = 77) -> None:
    """Predictor and extract() on an odd size: extract() drops a point by the heatmap pixel it was
    selected at, Predictor by its refined position, so with an input_scale that is not 1 they may
    disagree within a pixel of the bottom/right border margin and nowhere else."""
    grey = photo_batch(["rocket"], 1, height, width)[0, 0]
    out = Predictor(model)(grey.numpy())["keypoints"]
    reference = model.extract(grey[None, None])["keypoints"][0].numpy()
    margin = model.conf["remove_borders"]
    near_edge = lambda p: (p[:, 0] > width - margin - 1) | (p[:, 1] > height - margin - 1)  # noqa: E731
    same = lambda a, b: np.abs(a[:, None] - b[None]).max(-1).min(1) <= 1e-4  # noqa: E731
    assert len(reference) > 10
    assert np.all(same(reference, out) | near_edge(reference))
    assert np.all(same(out, reference) | near_edge(out))


def test_predictor_at_input_scale_2_on_an_odd_size_differs_only_at_the_border(files):
    """At input_scale 2 both pad 61x77 to 64x80 and then upsample."""
    assert_predictor_matches_extract_but_at_the_border(load_keypoint_model(files["pt"], input_scale=2.0).eval())


def test_fixed_size_onnx_agrees_with_pytorch_on_an_odd_size(files):
    """The shipped teacher at its own input_scale: the ONNX file pads 61x77 as PyTorch does."""
    grey = photo_batch(["rocket"], 1, 61, 77)[0, 0].numpy()
    out = Predictor(files["model"])(grey)["keypoints"]
    assert len(out) > 10 and same_points(Predictor(files["onnx"])(grey)["keypoints"], out)


def test_predictor_at_input_scale_1_5_pads_to_16_pixels_like_extract(files):
    """At 1.5 both pad 61x77 to 64x80 (multiples of 16) and upsample to 96x120 (whole cells)."""
    model = load_keypoint_model(files["pt"], input_scale=1.5).eval()
    predictor = Predictor(model)
    assert predictor.multiple == 16 and predictor._input_size(61, 77) == (64, 80)
    assert_predictor_matches_extract_but_at_the_border(model)


def test_fixed_size_onnx_refuses_larger_images_unless_resizing(files):
    large = photo_batch(["coffee"], 1, 2 * H, 2 * W)[0, 0].numpy()
    with pytest.raises(ValueError, match="larger than the 64x80 .* --dynamic, or pass resize=True"):
        Predictor(files["onnx"])(large)
    out = Predictor(files["onnx"], resize=True)(large)
    assert len(out["keypoints"]) > 0
    assert out["keypoints"][:, 0].max() < 2 * W and out["keypoints"][:, 1].max() < 2 * H  # original pixels
    assert out["keypoints"][:, 0].max() > W  # mapped back, not left in the 64x80 frame


def test_bad_inputs_get_clear_errors(files, tmp_path):
    predictor = Predictor(files["model"])
    with pytest.raises(ValueError, match="float images must be in \\[0, 1\\]"):
        predictor(np.full((32, 32), 200.0))
    with pytest.raises(TypeError, match="pass a path, a PIL image"):
        predictor(12)
    with pytest.raises(ValueError, match="Cannot read image"):
        (tmp_path / "broken.png").write_bytes(b"not a png")
        predictor(tmp_path / "broken.png")
    raw = export_onnx(files["model"], tmp_path / "raw.onnx", H, W, raw_heads=True, verbose=False).path
    with pytest.raises(ValueError, match="--raw-heads"):
        Predictor(raw)


def test_detector_checkpoint_and_onnx_predictors_agree(tmp_path):
    """A detector file and its (checked) ONNX export give the same boxes on a real photo."""
    from detkd.models.detection import create_detector, save_detector

    torch.manual_seed(0)
    detector = create_detector("retinanet_tiny_fpn", 3).eval()
    with torch.no_grad():  # spread the untrained class scores so that some pass the 0.05 threshold
        detector.model.head.classification_head.cls_logits.weight.mul_(10)
    pt = save_detector(detector, tmp_path / "detector.pt")
    result = export_onnx(detector, tmp_path / "detector.onnx", 128, 128, max_detections=20, verbose=False)
    meta = result.metadata
    assert meta["task"] == "detection" and meta["input"]["shape"] == [1, 3, 128, 128]
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "labels", "num_detections"]
    assert meta["parity"]["unexplained"] == 0 and meta["parity"]["errors"]["scores"] < 1e-4
    pixels = (photo_batch(["coffee"], 3, 120, 128)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_pt = Predictor(pt, max_detections=20)(pixels)  # 120x128 is padded to 128x128 by both
    from_onnx = Predictor(result.path)(pixels)
    assert set(from_pt) == {"boxes", "scores", "labels"} and 0 < len(from_pt["boxes"]) <= 20
    assert np.array_equal(from_pt["labels"], from_onnx["labels"])
    assert np.abs(from_pt["boxes"] - from_onnx["boxes"]).max() < 1e-3  # pixels
    assert np.abs(from_pt["scores"] - from_onnx["scores"]).max() < 1e-4
    assert from_pt["boxes"][:, 3].max() <= 120  # clipped to the real image, not the padding


def test_input_scale_argument_equals_a_model_saved_at_that_scale(files):
    """Predictor(model, input_scale=2) gives what the same weights saved with input_scale 2 give, and
    leaves the model it was handed at its own scale."""
    grey = photo_batch(["rocket"], 1, H, W)[0, 0].numpy()
    native = load_keypoint_model(files["pt"], input_scale=1.0).eval()
    scaled = Predictor(native, input_scale=2.0)(grey)
    reference = Predictor(load_keypoint_model(files["pt"], input_scale=2.0).eval())(grey)
    assert native.conf["input_scale"] == 1.0
    assert len(scaled["keypoints"]) > 10 and same_points(scaled["keypoints"], reference["keypoints"])
    assert not same_points(scaled["keypoints"], Predictor(native)(grey)["keypoints"])
    assert same_points(Predictor(files["pt"], input_scale=2.0)(grey)["keypoints"], reference["keypoints"])


def test_input_scale_is_refused_where_it_cannot_apply(files, tmp_path):
    with pytest.raises(ValueError, match="fixed at export"):
        Predictor(files["onnx"], input_scale=1.5)
    with pytest.raises(ValueError, match="between 0.25 and 4"):
        Predictor(files["pt"], input_scale=0)
    from detkd.models.detection import create_detector

    with pytest.raises(ValueError, match="key-point models"):
        Predictor(create_detector("fcos_nano_fpn", num_classes=2), input_scale=1.5)
