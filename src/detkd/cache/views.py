"""``K`` fixed augmented views per image with the teacher's cached outputs, as an endless stream.

Both pillars train from a cache the same way: view ``v`` of an image is drawn from a seed made of
the stream's seed, ``v`` and the image's content digest (so it does not depend on order or file
name), and the cache entry of that view is keyed ``"<content digest>/<v>"``. A pillar says how to
digest and name its images, which command fills a cache and how to encode its teacher's outputs.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detkd.cache.store import CacheBuildReport, TeacherCacheError, TeacherOutputCache
from detkd.engine.task import StreamDataset

#: Prefix of the teacher's fields in a sample (``teacher_logits``, ``teacher_features_0``, ...).
TEACHER_PREFIX = "teacher_"

#: A run that shows each cached view more often than this is warned: with few views a student memorises
#: them. Measured on the quickstart (15 photos, 5000 steps of 8): 64 views per photo (42 showings each)
#: kept 70-80% of the teacher's MMA@3 (versions and thread counts differ), 4 views per photo (667 showings
#: each) 20-25%.
MAX_SHOWINGS_PER_VIEW = 100

#: A view, once made, stays in memory while the views kept take at most this many bytes; later views are made
#: again at each showing. Making a 120x160 key-point view (crop, warp, photometric noise) takes about 3 ms of one
#: core, 15% of the quickstart's training step; the quickstart's 960 views take 74 MB.
VIEW_MEMORY_BYTES = 512 * 2**20


def view_reuse_warning(num_images: int, views_per_image: int, samples: int) -> str | None:
    """A warning when ``samples`` training samples would show each of the ``num_images x views_per_image``
    cached views more than :data:`MAX_SHOWINGS_PER_VIEW` times, naming the ``views_per_image`` that would
    not; ``None`` otherwise."""
    views = num_images * views_per_image
    if views < 1 or samples <= MAX_SHOWINGS_PER_VIEW * views:
        return None
    enough = -(-samples // (MAX_SHOWINGS_PER_VIEW * num_images))  # views >= 1, so num_images >= 1
    return (f"The teacher cache holds {views_per_image} view(s) of each of {num_images} image(s) "
            f"({views} in all) and training draws {samples:,} samples, so each view is shown about "
            f"{samples / views:.0f} times: the student may memorise them. Ask for at least {enough} views per "
            "image (--views-per-image, teacher_cache.views_per_image), add images, or train fewer steps.")


def sample_nbytes(sample: dict[str, Any]) -> int:
    """Bytes of the tensors and arrays in ``sample``."""
    return sum(value.nbytes for value in sample.values() if isinstance(value, (torch.Tensor, np.ndarray)))


class CachedViews(StreamDataset):
    """Sample ``k`` is view ``(k // N) mod K`` of image ``source_index(k)`` (``N`` images, one
    shuffled pass per epoch): the stream's sample for that view plus ``teacher_<field>`` for every
    cached field.

    Args:
        stream: the training images and view settings; it has ``seed``, ``num_items()`` and
            ``make_sample(item, rng)``.
        cache: an opened cache whose fingerprint covers the teacher and the view settings.
        views_per_image: ``K``.
        memory_bytes: views kept in memory once made, in bytes of their arrays (a view is a function of its
            image, number and settings, so a kept one is the one that would be made again); 0: none.
            Each data-loading process keeps its own.
    """

    #: The command that adds missing views, named in errors.
    cache_command = "detkd ... cache-teacher"

    def __init__(
        self, stream: Any, cache: TeacherOutputCache, views_per_image: int, memory_bytes: int = VIEW_MEMORY_BYTES,
    ) -> None:
        super().__init__(stream.seed)
        if views_per_image < 1:
            raise ValueError(f"views_per_image must be >= 1, got {views_per_image}")
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.stream, self.cache, self.views_per_image = stream, cache, views_per_image
        self.memory_bytes = memory_bytes
        self._digests: dict[int, str] = {}
        self._kept: dict[tuple[int, int], dict[str, Any]] = {}
        self._kept_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        # a data-loading process started by pickling keeps its own views, not a copy of these
        return {**self.__dict__, "_kept": {}, "_kept_bytes": 0}

    # -------------------------------------------------------------- what a pillar provides
    def content_digest(self, item: int) -> str:
        """Digest of what image ``item`` shows (hex)."""
        raise NotImplementedError

    def image_name(self, item: int) -> str:
        """Where image ``item`` comes from, for messages."""
        raise NotImplementedError

    # -------------------------------------------------------------- shared
    def num_items(self) -> int:
        return self.stream.num_items()

    def image_digest(self, item: int) -> str:
        digest = self._digests.get(item)
        if digest is None:
            digest = self._digests[item] = self.content_digest(item)
        return digest

    def view_key(self, item: int, view: int) -> str:
        return f"{self.image_digest(item)}/{view}"

    def view(self, item: int, view: int) -> dict[str, Any]:
        """The stream's sample for view ``view`` of image ``item``; a function of content and settings, not order.

        A new dict each call; its arrays are shared with the kept copy (``memory_bytes``): do not change them in place.
        """
        kept = self._kept.get((item, view))
        if kept is not None:
            return dict(kept)
        sample = self.make_view(item, view)
        size = sample_nbytes(sample)
        if self._kept_bytes + size <= self.memory_bytes:
            self._kept[item, view] = sample
            self._kept_bytes += size
        return dict(sample)

    def make_view(self, item: int, view: int) -> dict[str, Any]:
        """:meth:`view` made from the image, neither read from nor added to the views kept (a cache build's
        views: the object that builds a cache is not the one that trains from it)."""
        rng = np.random.default_rng([self.seed, 104729, view, int(self.image_digest(item)[:16], 16)])
        return self.stream.make_sample(item, rng)

    def reuse_warning(self, samples: int) -> str | None:
        """:func:`view_reuse_warning` for a run that draws ``samples`` samples from these views."""
        return view_reuse_warning(self.num_items(), self.views_per_image, samples)

    def all_views(self) -> list[tuple[int, int]]:
        return [(item, view) for item in range(self.num_items()) for view in range(self.views_per_image)]

    def missing_views(self) -> list[tuple[int, int]]:
        """``(item, view)`` pairs the cache has no outputs for."""
        return [(i, v) for i, v in self.all_views() if self.view_key(i, v) not in self.cache]

    def __getitem__(self, k: int) -> dict[str, Any]:
        if k < 0:
            raise IndexError(k)
        item = self.source_index(k)
        view = (k // self.num_items()) % self.views_per_image
        key = self.view_key(item, view)
        if key not in self.cache:
            raise TeacherCacheError(
                f"The teacher cache in '{self.cache.folder}' has no outputs for view {view} of "
                f"{self.image_name(item)} (content {key.split('/')[0][:12]}): the image is new or changed since "
                f"the cache was built, or views_per_image grew. Run '{self.cache_command}' with this "
                "config to add the missing views."
            )
        sample = self.view(item, view)
        for name, array in self.cache.read(key).items():
            sample[TEACHER_PREFIX + name] = torch.from_numpy(array)
        return sample

    def fill(
        self,
        teacher: nn.Module,
        encode: Callable[[Any], dict[str, np.ndarray]],
        batch_size: int,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        progress: bool = True,
        started: float | None = None,
        forward_options: dict[str, Any] | None = None,
    ) -> CacheBuildReport:
        """Run ``teacher`` on every view the cache lacks, store ``encode(outputs)``, then check the folder.

        The teacher runs in eval mode under ``torch.inference_mode`` (no autograd graph) on
        ``device`` and is handed back where and as it was. ``started``: when the build began
        (``time.perf_counter()``), for the report; default now. ``forward_options``: keyword
        arguments of each ``teacher(images, ...)`` call.
        """
        began = time.perf_counter() if started is None else started
        todo = self.missing_views()
        device = torch.device(device)
        if todo:
            from tqdm.auto import tqdm

            loader = DataLoader(_MissingViews(self, todo), batch_size=batch_size, num_workers=num_workers,
                                pin_memory=device.type == "cuda")
            home, was_training = next(teacher.parameters()).device, teacher.training
            teacher.eval().to(device)
            try:
                with self.cache.writer(len(todo)) as writer, torch.inference_mode():
                    for batch in tqdm(loader, desc="teacher cache", unit="batch", disable=not progress):
                        writer.add(batch["key"], encode(teacher(batch["image"].to(device, non_blocking=True), **(forward_options or {}))))
            finally:
                teacher.to(home).train(was_training)  # the caller's teacher stays as it was
        self.cache.verify()
        total = len(self.all_views())
        return CacheBuildReport(
            self.cache.folder, total, len(todo), total - len(todo),
            total * self.cache.nbytes_per_entry() / 2**20, time.perf_counter() - began, self.views_per_image,
        )


class _MissingViews(Dataset):
    """The pixels of the views a cache build still has to compute, with their keys."""

    def __init__(self, views: CachedViews, todo: list[tuple[int, int]]) -> None:
        self.views, self.todo = views, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, view = self.todo[index]
        return {"image": self.views.make_view(item, view)["image"], "key": self.views.view_key(item, view)}
