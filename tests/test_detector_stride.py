"""Students whose detector also reads stride-4 features (``detector_stride: 4``): layout, growth, files, export."""

from __future__ import annotations

import pytest
import torch

from detkd.models.keypoint_ops import logits_to_heatmap
from detkd.models.superpoint import create_model, fine_detector_offsets
from detkd.models.weights import load_keypoint_model, save_keypoint_model
from detkd.tasks.keypoint_students import initialise_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_statistics(model: torch.nn.Module, size: tuple[int, int] = (48, 64)) -> torch.nn.Module:
    """BatchNorm statistics that are not the identity, then eval mode."""
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 1, *size))
    return model.eval()


def test_fine_offsets_land_on_their_own_pixel_of_the_cell():
    # by hand: channel 4*1 + 2 of stride-4 block (row 1, column 0) is pixel (row 1, col 2) of that block, i.e.
    # image pixel (row 4 + 1, col 0 + 2) = (5, 2): bin 8*5 + 2 = 42 of cell (0, 0). Block (row 0, column 3) is
    # the right half of cell (0, 1): its channel 4*3 + 0 is pixel (3, 12) = bin 8*3 + 4 = 28 of cell (0, 1).
    offsets = torch.zeros(1, 16, 2, 4)
    offsets[0, 4 * 1 + 2, 1, 0] = 1.5
    offsets[0, 4 * 3 + 0, 0, 3] = -2.0
    cells = fine_detector_offsets(offsets)
    assert cells.shape == (1, 65, 1, 2)
    expected = torch.zeros(1, 65, 1, 2)
    expected[0, 42, 0, 0] = 1.5
    expected[0, 28, 0, 1] = -2.0
    torch.testing.assert_close(cells, expected)
    # and the heatmap puts that offset on that pixel: a cell of equal logits where pixel (5, 2) has +log 2 more
    logits = torch.zeros(1, 65, 1, 1)
    one = torch.zeros(1, 16, 2, 2)
    one[0, 4 * 1 + 2, 1, 0] = float(torch.log(torch.tensor(2.0)))
    heatmap = logits_to_heatmap(logits + fine_detector_offsets(one))[0]
    torch.testing.assert_close(heatmap[5, 2], torch.tensor(2 / 66))  # exp = 2 among 63 ones, itself and a dustbin
    torch.testing.assert_close(heatmap[0, 0], torch.tensor(1 / 66))


def test_the_fine_branch_adds_its_offsets_to_the_stride_8_logits():
    torch.manual_seed(0)
    model = _trained_statistics(create_model("fast-s", descriptor_dim=16, detector_stride=4, flat_threshold=0))
    torch.nn.init.normal_(model.detector_fine[-1].bn.weight)  # a branch that is not zero any more
    image = torch.rand(1, 1, 48, 64)
    features, fine = model.encode(image)
    assert fine.shape == (1, model.conf["channels"][1], 12, 16)
    expected = model.detector(features) + fine_detector_offsets(model.detector_fine(fine))
    heads = model.heads(image)
    torch.testing.assert_close(heads["logits"], expected)
    assert heads["logits"][:, 64].equal(model.detector(features)[:, 64])  # the "no point" bin is the head's
    assert heads["fine_features"] is None  # descriptors stay at stride 8 unless descriptor_stride says 4


def test_a_student_grown_from_a_stride_8_file_starts_as_that_file(tmp_path):
    torch.manual_seed(0)
    source = _trained_statistics(create_model("fast-s", descriptor_dim=16, descriptor_stride=4))
    save_keypoint_model(source, tmp_path / "coarse.pt")
    grown = create_model("fast-s", descriptor_dim=16, descriptor_stride=4, detector_stride=4)
    assert "grown to detector_stride 4" in initialise_student(grown, tmp_path / "coarse.pt")
    image = torch.rand(2, 1, 48, 64)
    for mode in ("train", "eval"):  # zero output in both: BatchNorm's scale and shift are 0
        getattr(source, mode)(), getattr(grown, mode)()
        with torch.no_grad():
            torch.testing.assert_close(grown(image)["logits"], source(image)["logits"])
    # the branch learns from the first step although it starts at zero
    grown.train()
    logits = grown(image)["logits"]
    logits[:, :64].logsumexp(dim=1).sum().backward()
    assert grown.detector_fine[-1].bn.weight.grad.abs().sum() > 0
    # the other way (dropping a trained branch) and any other difference are refused, naming the keys
    save_keypoint_model(grown.eval(), tmp_path / "fine.pt")
    with pytest.raises(ValueError, match="detector_stride 4; the student to train has detector_stride 8"):
        initialise_student(create_model("fast-s", descriptor_dim=16, descriptor_stride=4), tmp_path / "fine.pt")
    with pytest.raises(ValueError, match="descriptor_stride 4, detector_stride 8; the student to train has"):
        initialise_student(create_model("fast-s", descriptor_dim=16, detector_stride=4), tmp_path / "coarse.pt")


def test_file_round_trip_flat_images_and_bad_values(tmp_path):
    torch.manual_seed(0)
    model = _trained_statistics(create_model("fast-s", descriptor_dim=16, detector_stride=4))
    torch.nn.init.normal_(model.detector_fine[-1].bn.weight)
    save_keypoint_model(model, tmp_path / "fine.pt")
    loaded = load_keypoint_model(tmp_path / "fine.pt")
    assert loaded.conf["detector_stride"] == 4
    image = torch.rand(1, 1, 40, 48)
    torch.testing.assert_close(loaded(image)["heatmap"], model(image)["heatmap"])
    for value in (0.0, 0.5):  # the flat-region gate acts after the fine offsets
        assert model.extract(torch.full((1, 1, 64, 96), value))["keypoints"][0].shape == (0, 2)
    with pytest.raises(ValueError, match="detector_stride must be one of"):
        create_model("fast-s", detector_stride=2)


def test_onnx_export_of_a_fine_detector_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from detkd.export.onnx import export_onnx

    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_dim=16, descriptor_stride=4, detector_stride=4, max_keypoints=64)
    model = _trained_statistics(model, (64, 80))
    torch.nn.init.normal_(model.detector_fine[-1].bn.weight)
    result = export_onnx(model, tmp_path / "fine.onnx", 64, 80, verbose=False)
    assert all(value <= 1e-4 for value in result.parity.errors.values()), result.parity.errors
