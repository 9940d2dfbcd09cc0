"""Which device a run trains on: inside an RQ worker, exactly one.

Lightning's multi-device strategies (DDP) launch extra processes that re-run the command that
started them; for a worker that command is `crowdtune worker ...`, so each extra "rank" would be
another worker taking jobs. A run inside a worker therefore gets one device, and training one run on
several GPUs is done outside RQ, with torchrun or Lightning's own launcher (README, Devices).
"""

from __future__ import annotations

import re

from crowdtune.errors import CrowdtuneError

# the `device` setting: "auto", "cpu", "mps", "cuda" / "gpu" (the first) or "cuda:N" / "gpu:N"
DEVICE_PATTERN = r"^(auto|cpu|mps|(cuda|gpu)(:\d+)?)$"


def parsed_device(device: str) -> str | None:
    """The GPU index suffix of a valid `device` setting (":1" for "cuda:1", None without one);
    CrowdtuneError naming the choices for anything else."""
    match = re.match(DEVICE_PATTERN, device)
    if match is None:
        raise CrowdtuneError(f"{device!r} is not a device.",
                             'Set `device` to "auto", "cpu", "mps", "cuda" or "cuda:N".')
    return match.group(3)


def torch_device(device: str, cuda_available: bool | None = None) -> str:
    """Where a job puts a model it samples from (publishing, the Playground): the `device` setting as a
    torch device name. "auto" is "cuda" when torch sees a GPU, else "cpu" (`cuda_available` overrides
    the check, for tests); "gpu:N" is "cuda:N"."""
    index = parsed_device(device)
    if device == "auto":
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        return "cuda" if cuda_available else "cpu"
    if device in ("cpu", "mps"):
        return device
    return "cuda" + (index or "")


def pin_to_gpu(index: int, visible_count=None) -> None:
    """Make this process (an RQ worker and the jobs it forks) use GPU `index` alone: it becomes the only
    visible CUDA device and the `device` setting is "cuda". Call it before anything touches CUDA.

    `visible_count()` says how many CUDA devices torch then sees (default torch.cuda.device_count);
    none raises CrowdtuneError, so a worker never silently trains on the CPU instead."""
    import os

    if index < 0:
        raise CrowdtuneError(f"--gpu {index} is not a GPU index.", "Use 0 for the first GPU, 1 for the second, ...")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    os.environ["CROWDTUNE_DEVICE"] = "cuda"
    if visible_count is None:
        import torch

        visible_count = torch.cuda.device_count
    if visible_count() < 1:
        raise CrowdtuneError(f"--gpu {index}: torch sees no CUDA device {index} on this machine.",
                             "Check `nvidia-smi` and that torch is a CUDA build "
                             "(`python -c 'import torch; print(torch.cuda.is_available())'`), "
                             "or start the worker without --gpu to run on the CPU.")


def one_device(device: str, accelerator: str = "auto") -> dict:
    """pl.Trainer placement for one device.

    In: the `device` setting ("auto" = the first device of `accelerator`, which for "auto" is the
    first GPU if there is one, else the CPU) and the run's own accelerator setting.
    Out: {"accelerator", "devices", "strategy"}; `devices` is 1 or a one-item list ([1] for cuda:1),
    so Lightning always picks its single-device strategy.
    """
    index = parsed_device(device)
    if device == "auto":
        return {"accelerator": accelerator, "devices": 1, "strategy": "auto"}
    if device in ("cpu", "mps"):
        return {"accelerator": device, "devices": 1, "strategy": "auto"}
    return {"accelerator": "gpu", "devices": [int(index[1:])] if index else 1, "strategy": "auto"}


def asks_for_several(devices: int | str | list) -> bool:
    """Whether a Lightning `devices` value asks for more than one device ("auto" and 1 do not)."""
    if isinstance(devices, list):
        return len(devices) > 1
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return False
        return text == "-1" or ("," in text.strip(",")) or (text.isdigit() and int(text) > 1)
    return devices == -1 or devices > 1
