"""Non-finite losses on demand, through the loop's runtime seam (`Runtime.on_loss`): the same injection for the
plain runtime, Ray Train's local mode and Ray Train workers."""

from __future__ import annotations

import torch


def nan_runtime(base: type, at: int, times: int = 1, per_batch: bool = False) -> type:
    """A subclass of the runtime class `base` whose rank 0 turns the first micro-step's loss into NaN at iteration
    `at`: the first `times` times that iteration runs in the process, or (per_batch) every time the batch first
    seen at iteration `at` comes back. Built in a function so Ray pickles the class by value to its workers."""

    class NanAt(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fired, self.batch = 0, None

        def on_loss(self, loss, iter_num, micro_step, X):
            if self.rank != 0 or micro_step != 0:
                return loss
            if per_batch:
                if self.batch is None and iter_num == at:
                    self.batch = X.clone()
                fires = self.batch is not None and torch.equal(X, self.batch)
            else:
                fires = iter_num == at and self.fired < times
                self.fired += int(fires)
            return loss * float("nan") if fires else loss

    NanAt.__name__ = NanAt.__qualname__ = f"NanAt{at}{base.__name__}"
    return NanAt
