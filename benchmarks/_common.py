"""Shared helpers of the benchmarks: machine description, load average, memory, result files.

Every benchmark records the machine it ran on and the load average before and after, because the
figures are meant to be read as ratios measured side by side on a possibly shared machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo`` (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages, rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def versions() -> dict[str, str]:
    """Return the versions of the libraries the benchmarks time."""
    found = {"python": platform.python_version()}
    for name, module in (
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("antspyx", "ants"),
        ("nipype", "nipype"),
        ("numpy", "numpy"),
    ):
        try:
            found[name] = __import__(module).__version__
        except ImportError:
            found[name] = "not installed"
    return found


def gpu_name() -> str | None:
    """Return the CUDA device's name, or None without one."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def machine() -> dict[str, Any]:
    """Describe the machine: CPU model, cores, memory, GPU, platform, library versions."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = round(pages / 1024**3, 1)
    except (ValueError, OSError):
        memory = None
    return {
        "node": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "versions": versions(),
    }


def peak_rss_gib(children: bool = False) -> float:
    """Return the peak resident set size of this process (or of its finished children), GiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return round(resource.getrusage(who).ru_maxrss / 1024**2, 3)


def cpu_seconds() -> float:
    """Return the CPU time (user + system) this process has used, in seconds.

    On a shared machine the CPU time of a piece of work varies much less with the load than its
    wall time; with one compute thread it is the work itself.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_status() -> dict[str, float]:
    """Return this process's current ``RssAnon``, ``RssFile`` and peak ``VmHWM`` in GiB."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                values[key] = round(int(rest.split()[0]) / 1024**2, 3)
    except OSError:
        pass
    return values


class AnonPeak:
    """Sample ``RssAnon`` (memory not backed by a file) in a thread; ``peak`` holds the maximum.

    Memory-mapped slice stacks count in ``RssFile`` once read: those pages are clean page cache the
    kernel may drop at any time, so the anonymous part is what must fit in a node's RAM.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory_status().get("RssAnon", 0.0))
            time.sleep(self.interval)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory_status().get("RssAnon", 0.0))


def write_result(name: str, report: dict[str, Any], output: Path | None = None) -> Path:
    """Write ``report`` as ``benchmarks/results/<name>.json`` (or ``output``); return the path."""
    path = Path(output) if output else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def report_header(name: str, settings: dict[str, Any], load_before: list[float]) -> dict:
    """Return the common part of a result: benchmark name, settings, machine, load averages."""
    return {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def sync(device) -> None:
    """Wait for queued CUDA work so a timer sees it (no-op on the CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
