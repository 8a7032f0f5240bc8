"""detkd: knowledge distillation that makes big detection models small.

Two pillars share one engine:

* key points: a SuperPoint-family teacher distilled into a compact student
  (:mod:`detkd.models.superpoint`, :mod:`detkd.distill.keypoints`);
* object detectors (later issues).
"""

__version__ = "0.1.0"
