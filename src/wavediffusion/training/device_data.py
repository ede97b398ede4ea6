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


def map_tensors(fn: Callable[[torch.Tensor], Any], batch: Any) -> Any:
    """`batch` with fn applied to each tensor, keeping its dict / list / tuple structure."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {key: map_tensors(fn, value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(fn, value) for value in batch)
    raise TypeError(f"cannot hold a {type(batch).__name__} on the device; samples must be tensors "
                    "(in dicts, lists or tuples)")


def sample_bytes(dataset: Dataset, collate_fn=None) -> int:
    """Bytes of one collated sample (the first) of `dataset`, all its tensors together."""
    sizes = []
    map_tensors(lambda t: sizes.append(t.numel() * t.element_size()), (collate_fn or default_collate)([dataset[0]]))
    return sum(sizes)


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
            if self.fields is None:  # allocate once, at full size: no (N, ...) concatenation in memory
                self.fields = map_tensors(lambda t: self._empty(t, memory_format), batch)
            count = _batch_length(batch)
            _copy_into(self.fields, batch, start, count)
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


def _batch_length(batch: Any) -> int:
    lengths = []
    map_tensors(lambda t: lengths.append(t.shape[0]), batch)
    if len(set(lengths)) != 1:
        raise ValueError(f"the collated fields of a batch differ in length: {lengths}")
    return lengths[0]


def _copy_into(fields: Any, batch: Any, start: int, count: int) -> None:
    if isinstance(fields, torch.Tensor):
        fields[start:start + count].copy_(batch, non_blocking=True)
    elif isinstance(fields, Mapping):
        for key in fields:
            _copy_into(fields[key], batch[key], start, count)
    else:
        for part, values in zip(fields, batch):
            _copy_into(part, values, start, count)
