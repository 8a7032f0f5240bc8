"""SuperPoint weights in every public format load and compute what their own layer order says.

Each test builds a state dict with the real key names and shapes of the format, saves it with
``torch.save``, loads it through :func:`load_keypoint_model`, and compares the model with an
independent forward pass written here with ``torch.nn.functional``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detkd.models.superpoint import VARIANTS, create_model
from detkd.models.weights import (
    UnreadableWeightsError,
    WeightsMismatchError,
    keypoint_state_dict_format,
    load_keypoint_model,
    read_keypoint_model_meta,
    save_keypoint_model,
)

BN_EPS = 1e-3  # rpautrat's BatchNorm epsilon


def magicleap_shapes(c1=64, c2=64, c3=128, c4=128, head=256, dim=256) -> dict[str, tuple[int, ...]]:
    """Conv weight shapes of Magic Leap's superpoint_v1.pth (defaults: the real file)."""
    return {
        "conv1a": (c1, 1, 3, 3), "conv1b": (c1, c1, 3, 3),
        "conv2a": (c2, c1, 3, 3), "conv2b": (c2, c2, 3, 3),
        "conv3a": (c3, c2, 3, 3), "conv3b": (c3, c3, 3, 3),
        "conv4a": (c4, c3, 3, 3), "conv4b": (c4, c4, 3, 3),
        "convPa": (head, c4, 3, 3), "convPb": (65, head, 1, 1),
        "convDa": (head, c4, 3, 3), "convDb": (dim, head, 1, 1),
    }


def _conv_params(gen: torch.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    fan_in = shape[1] * shape[2] * shape[3]
    weight = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
    bias = torch.randn(shape[0], generator=gen) * 0.1
    return weight, bias


def make_magicleap_state(seed: int = 0, **widths: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for layer, shape in magicleap_shapes(**widths).items():
        state[f"{layer}.weight"], state[f"{layer}.bias"] = _conv_params(gen, shape)
    return state


RPAUTRAT_LAYERS = {  # rpautrat module path -> Magic Leap layer of the same shape
    **{f"backbone.{i}.{j}": f"conv{i + 1}{'ab'[j]}" for i in range(4) for j in range(2)},
    "detector.0": "convPa", "detector.1": "convPb", "descriptor.0": "convDa", "descriptor.1": "convDb",
}


def make_rpautrat_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Keys and shapes of rpautrat's superpoint_v6_from_tf.pth, with BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    shapes = magicleap_shapes()
    state = {}
    for module, layer in RPAUTRAT_LAYERS.items():
        shape = shapes[layer]
        state[f"{module}.conv.weight"], state[f"{module}.conv.bias"] = _conv_params(gen, shape)
        c = shape[0]
        state[f"{module}.bn.weight"] = 1 + 0.2 * torch.randn(c, generator=gen)
        state[f"{module}.bn.bias"] = 0.1 * torch.randn(c, generator=gen)
        state[f"{module}.bn.running_mean"] = 0.2 * torch.randn(c, generator=gen)
        state[f"{module}.bn.running_var"] = 0.5 + torch.rand(c, generator=gen)
        state[f"{module}.bn.num_batches_tracked"] = torch.tensor(1000, dtype=torch.long)
    return state


# ---------------------------------------------------------------------- reference forwards
def reference_magicleap(state: dict[str, torch.Tensor], image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Magic Leap's SuperPointNet.forward: conv -> ReLU, pool after blocks 1-3, no BatchNorm."""

    def conv(x, layer, relu=True):
        w = state[f"{layer}.weight"]
        y = F.conv2d(x, w, state[f"{layer}.bias"], padding=w.shape[-1] // 2)
        return F.relu(y) if relu else y

    x = image
    for block in "1234":
        x = conv(conv(x, f"conv{block}a"), f"conv{block}b")
        if block != "4":
            x = F.max_pool2d(x, kernel_size=2, stride=2)
    semi = conv(conv(x, "convPa"), "convPb", relu=False)
    desc = conv(conv(x, "convDa"), "convDb", relu=False)
    return semi, F.normalize(desc, p=2, dim=1)


def reference_rpautrat(state: dict[str, torch.Tensor], image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rpautrat's VGGBlock: conv -> ReLU -> BatchNorm(eval, eps 1e-3); heads without ReLU."""

    def block(x, module, relu=True):
        w = state[f"{module}.conv.weight"]
        y = F.conv2d(x, w, state[f"{module}.conv.bias"], padding=w.shape[-1] // 2)
        if relu:
            y = F.relu(y)
        return F.batch_norm(
            y, state[f"{module}.bn.running_mean"], state[f"{module}.bn.running_var"],
            state[f"{module}.bn.weight"], state[f"{module}.bn.bias"], training=False, eps=BN_EPS,
        )

    x = image
    for i in range(4):
        x = block(block(x, f"backbone.{i}.0"), f"backbone.{i}.1")
        if i < 3:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
    logits = block(block(x, "detector.0"), "detector.1", relu=False)
    desc = block(block(x, "descriptor.0"), "descriptor.1", relu=False)
    return logits, F.normalize(desc, p=2, dim=1)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(1, 1, 32, 48, generator=torch.Generator().manual_seed(7))


def assert_outputs(model, image, logits, descriptors):
    assert not model.training
    with torch.no_grad():
        out = model(image)
    assert out["logits"].shape == (1, 65, 4, 6)
    torch.testing.assert_close(out["logits"], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["descriptors"], descriptors, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- formats
@pytest.mark.parametrize("prefix", ["", "module.", "net.", "model.module."])
def test_magicleap_superpoint_v1(tmp_path: Path, image: torch.Tensor, prefix: str) -> None:
    state = make_magicleap_state()
    path = tmp_path / "superpoint_v1.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)

    assert keypoint_state_dict_format(path) == "magicleap"
    model = load_keypoint_model(path)
    assert model.conf["channels"] == VARIANTS["superpoint"]["channels"]
    assert model.conf["batch_norm"] is False
    assert_outputs(model, image, *reference_magicleap(state, image))


def test_magicleap_inside_a_bigger_model_ignores_the_rest(tmp_path: Path, image: torch.Tensor) -> None:
    state = make_magicleap_state(seed=3)
    bundle = {f"extractor.{k}": v for k, v in state.items()}
    bundle["matcher.transformers.0.ffn.weight"] = torch.zeros(4, 4)
    path = tmp_path / "bundle.pth"
    torch.save(bundle, path)
    with pytest.warns(UserWarning, match="matcher.transformers.0.ffn.weight"):
        model = load_keypoint_model(path)
    assert_outputs(model, image, *reference_magicleap(state, image))


@pytest.mark.parametrize("wrapper", [None, "model_state_dict", "state_dict"])
def test_rpautrat_v6_from_tf(tmp_path: Path, image: torch.Tensor, wrapper: str | None) -> None:
    state = make_rpautrat_state()
    assert len(state) == 12 * 7  # conv w/b + 5 BatchNorm tensors per layer
    path = tmp_path / "superpoint_v6_from_tf.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)

    assert keypoint_state_dict_format(path) == "rpautrat"
    model = load_keypoint_model(path)
    assert model.conf["batch_norm"] is True and model.conf["bn_eps"] == BN_EPS
    assert_outputs(model, image, *reference_rpautrat(state, image))


def test_narrow_magicleap_style_weights_infer_widths(tmp_path: Path, image: torch.Tensor) -> None:
    tiny = VARIANTS["tiny"]
    c1, c2, c3, c4 = tiny["channels"]
    state = make_magicleap_state(
        seed=1, c1=c1, c2=c2, c3=c3, c4=c4, head=tiny["head_channels"], dim=tiny["descriptor_dim"]
    )
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    model = load_keypoint_model(path, max_keypoints=17)
    assert model.conf["channels"] == tiny["channels"]
    assert model.conf["head_channels"] == tiny["head_channels"]
    assert model.conf["descriptor_dim"] == tiny["descriptor_dim"]
    assert model.conf["max_keypoints"] == 17  # a post-processing override
    assert_outputs(model, image, *reference_magicleap(state, image))


def test_own_format_round_trip(tmp_path: Path, image: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", batch_norm=True, detection_threshold=0.01).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "sub" / "student.pt"
    returned = save_keypoint_model(model, path, meta={"teacher": "superpoint", "step": 100, "where": tmp_path})
    assert returned == path and path.exists()
    assert not list(path.parent.glob("*.tmp"))

    raw = torch.load(path, weights_only=True)  # loads without full unpickling
    assert raw["format"] == "detkd.keypoints" and raw["version"] == 1
    assert keypoint_state_dict_format(raw) == "detkd.keypoints"
    assert read_keypoint_model_meta(path) == {"teacher": "superpoint", "step": 100, "where": str(tmp_path)}

    loaded = load_keypoint_model(path)
    assert loaded.conf == model.conf
    with torch.no_grad():
        expected = model(image)
    assert_outputs(loaded, image, expected["logits"], expected["descriptors"])


def test_training_checkpoint(tmp_path: Path, image: torch.Tensor) -> None:
    torch.manual_seed(1)
    student = create_model("tiny").eval()
    path = tmp_path / "last.pt"
    torch.save(
        {
            "format": "detkd.checkpoint", "step": 5, "model": student.state_dict(), "model_conf": student.conf,
            "optimizer": {"state": {}, "param_groups": []}, "torch_rng": torch.get_rng_state(),
        },
        path,
    )
    assert keypoint_state_dict_format(path) == "detkd.checkpoint"
    loaded = load_keypoint_model(path)
    assert loaded.conf == student.conf
    with torch.no_grad():
        expected = student(image)
    assert_outputs(loaded, image, expected["logits"], expected["descriptors"])


def test_file_needing_full_unpickling_is_refused_with_its_name_and_the_global(tmp_path: Path) -> None:
    from fractions import Fraction

    from detkd.models.weights import UnsafeWeightsError

    state = make_magicleap_state()
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": state, "note": Fraction(1, 3)}, path)
    with pytest.raises(UnsafeWeightsError, match=r"odd\.pth.*fractions\.Fraction.*re-save its state dict"):
        load_keypoint_model(path)


# ---------------------------------------------------------------------- errors
def test_mismatch_report_names_every_problem(tmp_path: Path) -> None:
    state = make_magicleap_state()
    state["conv2a.weight"] = torch.zeros(64, 64, 5, 5)  # wrong shape
    del state["conv3b.bias"]  # missing
    state["conv5a.weight"] = torch.zeros(8, 128, 3, 3)  # extra
    path = tmp_path / "broken_superpoint.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as info:
        load_keypoint_model(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "broken_superpoint.pth" in message and "magicleap" in message
    assert "missing keys (1): conv3b.bias" in message
    assert "unexpected keys (1): conv5a.weight" in message
    assert "conv2a.weight: expected [64, 64, 3, 3], found [64, 64, 5, 5]" in message
    assert "Fix:" in message.splitlines()[-1]


def test_mismatch_report_is_truncated(tmp_path: Path) -> None:
    state = {f"layer{i}.weight": torch.zeros(2) for i in range(30)}
    with pytest.raises(WeightsMismatchError) as info:
        load_keypoint_model(state)
    message = str(info.value)
    assert "unexpected keys (30)" in message and "(+20 more)" in message
    assert "layer29.weight" not in message
    assert "is this a SuperPoint checkpoint?" in message


def test_structural_override_that_contradicts_the_file(tmp_path: Path) -> None:
    state = make_magicleap_state()
    with pytest.raises(WeightsMismatchError, match="override"):
        load_keypoint_model(state, descriptor_dim=128)


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "superpoint_v1.pth"
    path.write_bytes(b"<html><body>404: Not Found</body></html>")
    with pytest.raises(UnreadableWeightsError, match="superpoint_v1.pth"):
        load_keypoint_model(path)

    truncated = tmp_path / "truncated.pth"
    torch.save(make_magicleap_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(UnreadableWeightsError, match="truncated.pth"):
        load_keypoint_model(truncated)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_keypoint_model(tmp_path / "nowhere.pth")


def test_format_names() -> None:
    assert keypoint_state_dict_format(make_magicleap_state()) == "magicleap"
    assert keypoint_state_dict_format({"state_dict": make_rpautrat_state()}) == "rpautrat"
    assert keypoint_state_dict_format(create_model("tiny").state_dict()) == "rpautrat"
    assert keypoint_state_dict_format({"fc.weight": torch.zeros(1)}) == "unknown"
    assert keypoint_state_dict_format([1, 2]) == "unknown"
