"""detkd: knowledge distillation that makes big detection models small.

Two pillars share one engine:

* key points: a SuperPoint-family teacher distilled into a compact student
  (:mod:`detkd.models.superpoint`, :mod:`detkd.distill.keypoints`);
* object detectors (later issues).
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):  # lazy: ``import detkd`` (and the CLI) stays fast
    if name == "Predictor":  # the application API: runs models without the training code
        from detkd.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'detkd' has no attribute '{name}'")
