"""detkd: knowledge distillation that makes big detection models small.

Two pillars share one engine:

* key points: a SuperPoint-family teacher distilled into a compact student
  (:mod:`detkd.models.superpoint`, :mod:`detkd.distill.keypoints`);
* object detectors (later issues).
"""

__version__ = "0.1.0"

from detkd.predictor import Predictor  # noqa: E402  (the application API: no training code needed)

__all__ = ["Predictor", "__version__"]
