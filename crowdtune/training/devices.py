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


def one_device(device: str, accelerator: str = "auto") -> dict:
    """pl.Trainer placement for one device.

    In: the `device` setting ("auto" = the first device of `accelerator`, which for "auto" is the
    first GPU if there is one, else the CPU) and the run's own accelerator setting.
    Out: {"accelerator", "devices", "strategy"}; `devices` is 1 or a one-item list ([1] for cuda:1),
    so Lightning always picks its single-device strategy.
    """
    match = re.match(DEVICE_PATTERN, device)
    if match is None:
        raise CrowdtuneError(f"{device!r} is not a device.",
                             'Set `device` to "auto", "cpu", "mps", "cuda" or "cuda:N".')
    if device == "auto":
        return {"accelerator": accelerator, "devices": 1, "strategy": "auto"}
    if device in ("cpu", "mps"):
        return {"accelerator": device, "devices": 1, "strategy": "auto"}
    index = match.group(3)
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
