"""The order training examples are visited in: deterministic per (seed, epoch), optionally grouped by length.

`EpochSampler` yields the whole dataset's order for one epoch; Accelerate's prepared data loader then deals
consecutive batches round-robin to the ranks. Every rank computes the same order from the seed and epoch alone
(no shared RNG state), so the split is consistent across processes and nodes, and a resumed run that skips the
first batches of an epoch sees exactly the batches the interrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# Like transformers' LengthGroupedSampler: sort within "megabatches" of this many batches, so similar lengths
# share a batch while the order stays random at a coarser grain.
MEGABATCH_BATCHES = 50


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch; with `lengths`, examples of similar length are kept together."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        num_processes: int = 1,
    ) -> None:
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_samples} samples")
        self.num_samples = num_samples
        self.seed = seed
        self.lengths = list(lengths) if lengths is not None else None
        # One global step consumes batch_size * num_processes examples: group at that grain.
        self.megabatch_size = MEGABATCH_BATCHES * batch_size * num_processes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """The example indices of `epoch`, in visiting order."""
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        permutation: list[int] = torch.randperm(self.num_samples, generator=generator).tolist()
        if self.lengths is None:
            return permutation
        lengths = self.lengths
        grouped: list[int] = []
        for start in range(0, len(permutation), self.megabatch_size):
            megabatch = permutation[start : start + self.megabatch_size]
            grouped.extend(sorted(megabatch, key=lambda index: -lengths[index]))
        return grouped

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def __len__(self) -> int:
        return self.num_samples
