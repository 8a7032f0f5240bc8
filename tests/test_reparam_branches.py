"""RepVGG branches of the fast encoder (``reparam_branches``): trained as three branches, run as one conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_outputs_in_both_modes

from detkd.models.superpoint import create_model
from detkd.models.superpoint_blocks import ConvBNReLU, RepConvBNReLU
from detkd.models.weights import load_keypoint_model, save_keypoint_model
from detkd.tasks.keypoint_students import initialise_student


def randomised(block: RepConvBNReLU) -> RepConvBNReLU:
    """``block`` with BatchNorm scales, shifts and running statistics that are not the identity."""
    torch.manual_seed(1)
    for bn in (block.bn, block.bn_1x1, block.bn_identity):
        if bn is not None:
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return block.eval()


def branch_sum(block: RepConvBNReLU, x: torch.Tensor) -> torch.Tensor:
    """The three branches run one by one with the running statistics (what the merged conv must equal)."""
    def bn(module, y):
        return F.batch_norm(y, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0,
                            module.eps)

    y = bn(block.bn, block.conv(x)) + bn(block.bn_1x1, block.conv_1x1(x))
    return F.relu(y + bn(block.bn_identity, x) if block.bn_identity is not None else y)


def test_merged_conv_by_hand():
    # one channel: the 3x3 conv is zero, the 1x1 branch doubles, the identity branch triples, BatchNorms plain
    # (mean 0, variance 1 - eps: scale 1) except the identity's scale 3 and shift 0.5 -> 2x + 3x + 0.5
    block = RepConvBNReLU(1, 1).eval()
    for bn in (block.bn, block.bn_1x1, block.bn_identity):
        bn.running_var.fill_(1 - bn.eps)
    torch.nn.init.zeros_(block.conv.weight)
    block.conv_1x1.weight.data.fill_(2.0)
    block.bn_identity.weight.data.fill_(3.0)
    block.bn_identity.bias.data.fill_(0.5)
    weight, bias = block.merged_weights()
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 1, 1] = 5.0
    torch.testing.assert_close(weight, expected)
    torch.testing.assert_close(bias, torch.tensor([0.5]))
    x = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]])
    torch.testing.assert_close(block(x), torch.tensor([[[[5.5, 0.0], [0.5, 10.5]]]]))


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(4, 4, 1), (3, 5, 1), (4, 4, 2)])
def test_eval_mode_runs_the_three_branches_as_one_conv(c_in, c_out, stride):
    block = randomised(RepConvBNReLU(c_in, c_out, stride=stride))
    assert (block.bn_identity is not None) == (c_in == c_out and stride == 1)
    x = torch.randn(2, c_in, 9, 12)
    with torch.no_grad():
        torch.testing.assert_close(block(x), branch_sum(block, x), atol=1e-5, rtol=1e-5)


def test_training_mode_sums_the_branches_with_batch_statistics():
    block = RepConvBNReLU(4, 4).train()
    x = torch.randn(2, 4, 6, 8)
    expected = F.relu(block.bn(block.conv(x)) + block.bn_1x1(block.conv_1x1(x)) + block.bn_identity(x))
    torch.testing.assert_close(block(x), expected)


def test_a_plain_student_grown_to_branches_starts_as_the_file(tmp_path):
    torch.manual_seed(0)
    plain = create_model("fast-s", descriptor_dim=16)
    plain.train()
    plain(torch.rand(2, 1, 64, 80))  # running statistics that are not the identity
    path = save_keypoint_model(plain.eval(), tmp_path / "plain.pt")
    grown = create_model("fast-s", descriptor_dim=16, reparam_branches=True)
    assert "reparam_branches" in initialise_student(grown, path)
    assert_same_outputs_in_both_modes(plain, grown, torch.rand(2, 1, 64, 80))
    # a fine-tune of a branched file keeps its branches unless the config says otherwise
    from detkd.tasks.keypoint_students import structure_for_init

    branched = save_keypoint_model(grown, tmp_path / "branched.pt")
    assert structure_for_init("fast-s", {"reparam_branches": None}, branched)["reparam_branches"] is True
    assert structure_for_init("fast-s", {"reparam_branches": False}, branched)["reparam_branches"] is False
    # the other way (branches dropped) is refused with the option named
    with pytest.raises(ValueError, match="reparam_branches True.*reparam_branches False"):
        initialise_student(create_model("fast-s", descriptor_dim=16), save_keypoint_model(grown, tmp_path / "g.pt"))


def test_model_file_round_trip_keeps_the_branches(tmp_path):
    torch.manual_seed(0)
    model = create_model("fast-s", descriptor_dim=16, reparam_branches=True)
    model.train()
    model(torch.rand(2, 1, 64, 80))
    model.eval()
    loaded = load_keypoint_model(save_keypoint_model(model, tmp_path / "rep.pt"))
    assert loaded.conf["reparam_branches"] is True
    assert sum(isinstance(m, RepConvBNReLU) for m in loaded.modules()) == 6
    image = torch.rand(1, 1, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image)["descriptors"], model(image)["descriptors"])


def test_branches_need_the_fast_encoder_with_batch_norm():
    with pytest.raises(ValueError, match="reparam_branches needs the fast encoder"):
        create_model("tiny", reparam_branches=True)
    with pytest.raises(ValueError, match="batch_norm False"):
        create_model("fast-s", batch_norm=False, reparam_branches=True)
    assert not any(isinstance(m, RepConvBNReLU) for m in create_model("fast-s").modules())
    assert any(isinstance(m, ConvBNReLU) for m in create_model("fast-s").modules())


def test_onnx_graph_of_a_branched_student_has_the_plain_students_convs(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from detkd.export.onnx import export_onnx

    from collections import Counter

    torch.manual_seed(0)
    operators = {}
    for branches in (False, True):
        model = create_model("fast-s", descriptor_dim=16, max_keypoints=32, reparam_branches=branches)
        model.train()
        model(torch.rand(2, 1, 64, 80))
        result = export_onnx(model.eval(), tmp_path / f"rep{branches}.onnx", 64, 80, verbose=False)
        assert all(value <= 1e-4 for value in result.parity.errors.values()), result.parity.errors
        operators[branches] = Counter(node.op_type for node in onnx.load(str(result.path)).graph.node)
    assert operators[True] == operators[False]  # the merge is folded into the weights: the same graph


def test_parameters_at_inference_are_the_plain_students():
    from detkd.models.superpoint import count_parameters, inference_parameter_count

    plain, branched = create_model("fast-s"), create_model("fast-s", reparam_branches=True)
    assert inference_parameter_count(branched) == inference_parameter_count(plain) == count_parameters(plain)
    # per block: a 1x1 conv (c_in * c_out) and its BatchNorm (2 c_out), plus 2 c_in where the identity branch is
    widths = [(1, 8, False), (8, 16, False), (16, 16, True), (16, 32, False), (32, 32, True), (32, 32, True)]
    extra = sum(c_in * c_out + 2 * c_out + (2 * c_in if identity else 0) for c_in, c_out, identity in widths)
    assert count_parameters(branched) - count_parameters(plain) == extra
