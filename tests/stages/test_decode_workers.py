"""Decode workers fork from a forkserver that imported what they need once per run, instead of each
worker of each loader importing torch and datasets again (seconds per loader on a busy machine)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lookalike.stages.dataset.torch_data import worker_context


class _ParentLibraries(Dataset):
    """Item i: whether the process this worker was forked from had torch's library loaded."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        with open(f"/proc/{os.getppid()}/maps") as maps:
            return torch.tensor("libtorch_cpu" in maps.read())


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc")
def test_decode_workers_fork_from_a_server_that_imported_torch_already():
    loader = DataLoader(_ParentLibraries(), batch_size=1, num_workers=1, multiprocessing_context=worker_context(1))
    assert [bool(b) for b in loader] == [True, True]  # the forkserver loaded torch: no worker imports it again
    assert worker_context(0) is None
