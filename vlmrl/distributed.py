"""Processes under ``accelerate launch``: which one this is, each one's share of the episodes, and
gathering what each found.

``accelerate launch --multi_gpu --num_processes N`` on a machine without a GPU starts N processes,
but ``PartialState()`` without ``cpu=True`` sees no GPU backend and reports a single process in each
(FACTS): every process then played every episode. ``process_state`` asks for the CPU (gloo) state
where there is no GPU, so the N processes are ranks 0..N-1 on CPUs and GPUs alike.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def process_state():
    """accelerate's ``PartialState`` for this process: gloo on CPUs, the GPU backend where there is one."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def my_share(jobs: list[T], state=None) -> list[T]:
    """This process's jobs: every N-th from its rank (with one process, all of them)."""
    state = state or process_state()
    return [job for i, job in enumerate(jobs) if i % state.num_processes == state.process_index]


def gather(obj: Any, state=None) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (one process: ``[obj]``)."""
    state = state or process_state()
    if state.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])
