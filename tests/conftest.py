"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread.

    Tiny models gain nothing from a second thread, and on a shared CPU a descheduled or spinning
    OpenMP thread makes every parallel operation wait for it (measured here: 0.5 s per tiny
    detector step with 1 thread, 9 s with 2; 100 ms per torch.stack).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def random_aliked_lightglue(tmp_path_factory):
    """A random ALIKED LightGlue saved the way the published file is (old layer names): a weight file for
    ``--matcher lightglue`` tests without the real one."""
    from detkd.evaluation.lightglue import KINDS, new_lightglue

    torch.manual_seed(0)
    state = new_lightglue(KINDS["aliked"]).state_dict()
    state = {k.replace("transformers.0.self_attn.", "self_attn.0."): v for k, v in state.items()}
    path = tmp_path_factory.mktemp("lg") / "aliked_lightglue.pth"
    torch.save(state, path)
    return path


def make_keypoint_workspace(folder, photo_shapes):
    """A random-weight ``tiny`` teacher (``folder/teacher.pt``, seed 0) and random photos
    (``folder/photos/p{i}.png``, one per shape ``(H, W)`` grey or ``(H, W, 3)`` colour, seed 0)."""
    import numpy as np
    from PIL import Image

    from detkd.models.superpoint import create_model
    from detkd.models.weights import save_keypoint_model

    torch.manual_seed(0)
    save_keypoint_model(create_model("tiny").eval(), folder / "teacher.pt")
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate(photo_shapes):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    return folder


def distill_small_student(folder, student: dict, steps: int):
    """``detkd keypoints distill`` of a student configured by ``student`` (the config's ``student`` section) for
    ``steps`` steps on a random workspace in ``folder`` (:func:`make_keypoint_workspace`); the CLI result and the run folder."""
    import yaml
    from click.testing import CliRunner

    from detkd.cli.main import main

    photos = make_keypoint_workspace(folder, [(70, 90, 3)] * 2) / "photos"
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "student": student,
        "eval": {"pairs_per_image": 1, "height": 64, "width": 96, "max_keypoints": 100},
        "train": {"log_every": 1, "checkpoint_every": 2, "progress": False},
    }))
    out = folder / "run"
    result = CliRunner().invoke(main, [
        "keypoints", "distill", "--config", str(folder / "config.yaml"), "--teacher", str(folder / "teacher.pt"),
        "--images", str(photos), "--eval-images", str(photos), "--out", str(out), "--steps", str(steps),
        "--batch-size", "2", "--height", "64", "--width", "96",
    ])
    return result, out


def assert_same_outputs_in_both_modes(model: torch.nn.Module, other: torch.nn.Module, image: torch.Tensor) -> None:
    """``other`` (e.g. a student grown from ``model``'s file) gives ``model``'s cell logits and descriptors on
    ``image``, in training mode (batch statistics) and in eval mode (running statistics)."""
    for mode in (True, False):
        model.train(mode), other.train(mode)
        with torch.no_grad():
            a, b = model(image), other(image)
        torch.testing.assert_close(b["logits"], a["logits"])
        torch.testing.assert_close(b["descriptors"], a["descriptors"])
