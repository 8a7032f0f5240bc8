"""``model.init`` of ``detkd detect train``: a detector started from another run's weights."""

from __future__ import annotations

import pytest
import torch

from detkd.config import merge_config
from detkd.data.detection import write_synthetic_dataset
from detkd.models.detection import create_detector, load_detector, read_detector_extra, save_detector
from detkd.tasks.detection import DEFAULT_TRAIN_CONFIG, IncompatibleModelsError, initialise_detector, run_detection_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = ["circle", "triangle", "rectangle", "star", "cross"]


@pytest.fixture()
def shapes_model(tmp_path):
    """A 5-class ``fcos_nano_fpn`` saved as a detector file (the "pretrained" model), and its path."""
    torch.manual_seed(0)
    source = create_detector("fcos_nano_fpn", 5, class_names=SHAPES)
    return source, save_detector(source, tmp_path / "shapes.pt")


def test_init_copies_every_fitting_tensor_and_leaves_the_class_layer_fresh(shapes_model):
    source, path = shapes_model
    torch.manual_seed(1)
    model = create_detector("fcos_nano_fpn", 1, class_names=["Tree"])
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    said = initialise_detector(model, path)

    ours, theirs = model.state_dict(), source.state_dict()
    other_shape = [k for k in ours if ours[k].shape != theirs[k].shape]
    # one class instead of five: only the class scores' last conv differs (weight and bias)
    assert len(other_shape) == 2 and all("cls_logits" in k for k in other_shape)
    for key, value in ours.items():
        assert torch.equal(value, fresh[key] if key in other_shape else theirs[key]), key
    assert f"{len(ours) - 2} of {len(ours)} tensors copied; 2 start fresh" in said
    assert "trained on circle, triangle, rectangle, star, cross" in said


def test_init_refuses_another_detector_and_a_missing_file(shapes_model, tmp_path):
    _, path = shapes_model
    with pytest.raises(IncompatibleModelsError, match="holds a fcos_nano_fpn, but the model to train is a fcos_tiny_fpn"):
        initialise_detector(create_detector("fcos_tiny_fpn", 1), path)
    with pytest.raises(FileNotFoundError, match="model.init '.*nothing.pt' is not a file"):
        initialise_detector(create_detector("fcos_nano_fpn", 1), tmp_path / "nothing.pt")


def test_training_from_init_starts_from_its_weights_and_records_it(shapes_model, tmp_path, capsys):
    source, path = shapes_model
    data_yaml = write_synthetic_dataset(tmp_path / "data", num_train=4, num_val=2, size=128, seed=0)
    config = merge_config(DEFAULT_TRAIN_CONFIG, {
        "model": {"name": "fcos_nano_fpn", "init": str(path)},
        "data": {"config": str(data_yaml), "height": 128, "width": 128},
        "train": {"steps": 1, "batch_size": 2, "lr": 0.0, "weight_decay": 0.0, "warmup_steps": 0, "progress": False,
                  "accelerator": "cpu", "precision": "32-true"},
        "eval": {"split": "test"},  # no test part: no evaluation after the step
    })
    outcome = run_detection_training(config, tmp_path / "run")
    assert "init    : " in capsys.readouterr().out
    trained = load_detector(outcome.model_path).state_dict()
    # learning rate 0: the weights are the file's (same class list here, so every tensor came from it)
    for key, value in source.state_dict().items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(trained[key], value), key
    assert read_detector_extra(outcome.model_path)["init"] == str(path)

    # resuming takes the weights from the checkpoint: the init file is not needed any more
    path.unlink()
    config["train"]["steps"] = 2
    resumed = run_detection_training(config, tmp_path / "run", resume=True)
    assert resumed.steps == 2 and "init    : " not in capsys.readouterr().out
