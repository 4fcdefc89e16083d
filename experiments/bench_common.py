"""What every benchmark script prints about the machine it ran on."""

from __future__ import annotations

import pathlib
import platform

import jax


def machine() -> str:
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.device_kind} x{jax.device_count()}"
    model = platform.processor() or platform.machine()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {len(jax.devices())} CPU device(s)"
