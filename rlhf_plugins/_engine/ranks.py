"""This process's place among the ranks of a run, and what a stage leaves in Accelerate's
process-wide state. Imports of torch and accelerate happen inside functions."""

from __future__ import annotations

import os
import sys
from typing import Any


def process_index() -> int:
    return int(os.environ.get("RANK", "0"))


def num_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_index() == 0


def wait_for_everyone() -> None:
    """A barrier across ranks when running under a launcher; a no-op otherwise."""
    if num_processes() > 1:
        process_state().wait_for_everyone()


def deepspeed_launched() -> bool:
    """True in a rank that ``accelerate launch --use_deepspeed`` started."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def process_state() -> Any:
    """Accelerate's ``PartialState`` for this rank, configured once.

    Without CUDA, ranks need it spelled out: plain ranks get ``cpu=True`` (otherwise each sees a
    single process and collectives do nothing), DeepSpeed ranks get a gloo process group
    (otherwise Accelerate counts one process and DeepSpeed's batch-size check fails).
    """
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        return PartialState()
    if deepspeed_launched():
        return PartialState(backend="gloo")
    return PartialState(cpu=True)


def forget_stage_configuration() -> None:
    """Forget what the stage that just ended configured in Accelerate and transformers, keeping
    the process group: the accelerator state (its DeepSpeed plugin, mixed precision), the
    gradient-accumulation state and the DeepSpeed config registered with transformers. The
    next stage in this process then configures its own; otherwise Accelerate refuses a second
    accelerator with a DeepSpeed plugin, and a ZeRO-3 registration left behind would make
    every later ``from_pretrained`` partition its model. Uses Accelerate's
    ``AcceleratorState._reset_state`` / ``GradientState._reset_state`` (what its own tests
    call between accelerators); a no-op before accelerate is imported."""
    if "accelerate" not in sys.modules:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if "transformers" in sys.modules:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def free_memory() -> None:
    """Collect the objects of a stage that has returned (a DeepSpeed engine holds reference
    cycles, so its memory would wait for the cyclic collector) and hand CUDA's cached blocks
    back, so the next stage in this process starts with the device's memory free."""
    import gc

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
