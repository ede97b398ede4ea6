"""A whole dataset held in GPU memory, batched by index there.

The training loop uses it instead of a DataLoader when the data fits (TrainConfig's
`data_on_device`): every sample is read once, collated into one tensor per field on the
device, and each step's batch is gathered from those tensors by index — no worker
processes, no decoding of Zarr chunks, no host-to-device copy per step. A batch holds the
same values, in the same order, as the DataLoader would give for the same index list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

READ_BATCH = 256  # samples per read while loading


def leaves(batch: Any) -> list:
    """The leaves of a (nested dict / list / tuple) batch, in a fixed order."""
    if isinstance(batch, Mapping):
        return [leaf for value in batch.values() for leaf in leaves(value)]
    if isinstance(batch, (list, tuple)):
        return [leaf for value in batch for leaf in leaves(value)]
    return [batch]


def map_tensors(fn: Callable[[torch.Tensor], Any], batch: Any) -> Any:
    """`batch` with fn applied to each tensor, keeping its dict / list / tuple structure;
    other leaves stay as they are."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {key: map_tensors(fn, value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(fn, value) for value in batch)
    return batch


def tensor_leaves(batch: Any) -> list[torch.Tensor]:
    """leaves(batch), which must all be tensors to be held on the device."""
    found = leaves(batch)
    for leaf in found:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"cannot hold a {type(leaf).__name__} on the device; samples must be tensors "
                            "(in dicts, lists or tuples)")
    return found


def sample_bytes(dataset: Dataset, collate_fn=None) -> int:
    """Bytes of one collated sample (the first) of `dataset`, all its tensors together."""
    return sum(t.numel() * t.element_size() for t in tensor_leaves((collate_fn or default_collate)([dataset[0]])))


class DeviceData:
    """Every sample of `dataset`, collated into one (N, ...) tensor per field on `device`.

    `memory_format=torch.channels_last` stores 4-D fields (N, C, H, W) in NHWC, so that
    their batches are NHWC too. `num_workers` reads with that many DataLoader workers.
    """

    def __init__(self, dataset: Dataset, device: torch.device, collate_fn=None, num_workers: int = 0,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.device = device
        self.length = len(dataset)
        loader = DataLoader(dataset, batch_size=READ_BATCH, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_fn, pin_memory=device.type == "cuda")
        self.fields = None
        start = 0
        for batch in loader:
            parts = tensor_leaves(batch)
            if self.fields is None:  # allocate once, at full size: no (N, ...) concatenation in memory
                self.fields = map_tensors(lambda t: self._empty(t, memory_format), batch)
            count = parts[0].shape[0]
            for field, part in zip(leaves(self.fields), parts):
                field[start:start + count].copy_(part, non_blocking=True)
            start += count
        if start != self.length:
            raise RuntimeError(f"read {start} samples of a dataset of {self.length}")

    def _empty(self, example: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        format_ = memory_format if example.ndim == 4 else torch.contiguous_format
        return torch.empty((self.length, *example.shape[1:]), dtype=example.dtype, device=self.device,
                           memory_format=format_)

    def __len__(self) -> int:
        return self.length

    def batch(self, indices: Sequence[int]) -> Any:
        """The samples `indices`, collated, on the device."""
        index = torch.as_tensor(indices, dtype=torch.long).to(self.device, non_blocking=True)
        return map_tensors(lambda t: t[index], self.fields)  # indexing keeps NHWC (index_select would not)

    def batches(self, index_lists: Sequence[Sequence[int]]):
        """One batch per index list, in order (what a DataLoader with batch_sampler gives)."""
        for indices in index_lists:
            yield self.batch(indices)

