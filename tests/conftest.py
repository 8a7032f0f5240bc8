"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


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
