"""Run the participant level in a child process and read its timings back from its log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

NODE_LINE = re.compile(r'\[Node\] Finished "(\w+)", elapsed time ([\d.]+)s')
ANTS_LINE = re.compile(r"ants\.registration (\w+) took ([\d.]+) s")
WORKFLOW_LINE = re.compile(r"workflow finished in ([\d.]+) s")


def participant_command(
    bids: Path, out: Path, work: Path, labels: list[str], args, nprocs: int = 1
) -> list[str]:
    """Return the ``bids_qnet`` participant-level command line the benchmarks time."""
    return [
        sys.executable,
        "-m",
        "bids_qnet.cli.run",
        str(bids),
        str(out),
        "participant",
        "--participant-label",
        *labels,
        "--registration-profile",
        args.profile,
        "--embedding-weights",
        args.weights,
        "--image-size",
        str(args.image_size),
        "--template-resolution",
        f"{args.resolution:g}",
        "--nprocs",
        str(nprocs),
        "--omp-nthreads",
        str(getattr(args, "omp_nthreads", 1)),
        "--plugin",
        args.plugin,
        "-w",
        str(work),
        "--random-seed",
        "1",
        "-vv",
    ]


class TreeSampler:
    """Sample the RSS and CPU time of a process and all its descendants from ``/proc``.

    Nipype's MultiProc workers are children of a forkserver, not of the process that is run, so
    ``wait4`` does not count them; this does (``peak_tree_rss_gib``: the largest sum of the
    tree's RSS at one sample; ``tree_cpu_seconds``: each process's last sampled CPU time, summed;
    ``peak_process_rss_gib``: the largest ``VmHWM``, the kernel's own peak RSS of one process,
    read at each sample).

    ``wait4``'s ``ru_maxrss`` is not used for the peak: Linux keeps a process's high-water mark
    across ``execve``, so a child started from this benchmark reports at least the benchmark's
    own RSS at the fork (antspyx, the template images) whatever it uses itself.
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss, self.cpu, self.hwm = 0, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> dict[int, list[str]]:
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    text = (entry / "stat").read_text()
                except OSError:
                    continue
                stats[int(entry.name)] = text[text.rindex(")") + 2 :].split()
        members, grew = {self.pid}, True
        while grew:
            found = {p for p, f in stats.items() if int(f[1]) in members} - members
            members |= found
            grew = bool(found)
        return {p: stats[p] for p in members if p in stats}

    def _run(self) -> None:
        page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            tree = self._tree()
            self.peak_rss = max(self.peak_rss, sum(int(f[21]) for f in tree.values()) * page)
            for pid, fields in tree.items():
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
                self.hwm[pid] = max(self.hwm.get(pid, 0), _vm_hwm_kib(pid))
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "peak_tree_rss_gib": self.peak_rss / 1024**3,
            "peak_process_rss_gib": max(self.hwm.values(), default=0) / 1024**2,
            "tree_cpu_seconds": sum(self.cpu.values()),
        }


def _vm_hwm_kib(pid: int) -> int:
    """Return a process's peak RSS (``VmHWM``, KiB) from ``/proc``, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_timed(command: list[str], log: Path, source: Path | None = None) -> dict:
    """Run ``command``; return wall seconds, the child's peak RSS (GiB) and its log's timings.

    ``source``: a folder holding another version's ``bids_qnet`` package, put first on the
    child's ``PYTHONPATH`` (a before/after comparison in one run).
    """
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(":")
    start = time.perf_counter()
    with log.open("w") as handle:
        # Run outside the repository: its folder first on sys.path would shadow ``source``.
        child = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )
        sampler = TreeSampler(child.pid)
        _, status, usage = os.wait4(child.pid, 0)
        tree = sampler.stop()
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}); see {log}")
    return {
        "seconds": seconds,
        # CPU time of the child and the processes it waited for (validator, workers): on a
        # shared machine it varies much less with the load than the wall time.
        "cpu_seconds": max(usage.ru_utime + usage.ru_stime, tree["tree_cpu_seconds"]),
        # the largest process's own peak, sampled (see TreeSampler); ru_maxrss counts the fork
        "peak_rss_gib": tree["peak_process_rss_gib"] or usage.ru_maxrss / 1024**2,
        "wait4_maxrss_gib": usage.ru_maxrss / 1024**2,
        **tree,
        **log_timings(log),
    }


def log_timings(log: Path) -> dict:
    """Read node, registration and workflow timings from a ``-vv`` participant-level log."""
    text = log.read_text(errors="replace")
    nodes: dict[str, float] = {}
    # In-process (Linear) runs print nipype's lines twice (its handler and the root one).
    for name, seconds in set(NODE_LINE.findall(text)):
        nodes[name] = nodes.get(name, 0.0) + float(seconds)
    workflow = WORKFLOW_LINE.search(text)
    calls = set(ANTS_LINE.findall(text))
    return {
        "nodes_s": {k: round(v, 2) for k, v in nodes.items()},
        "registration_calls_s": round(sum(float(s) for _, s in calls), 2),
        "workflow_s": float(workflow.group(1)) if workflow else None,
    }


def breakdown(run: dict) -> dict:
    """Split a run's wall time into start-up + preflight, registration and the other steps."""
    nodes, registration = run["nodes_s"], run["registration_calls_s"]
    parts = {"startup_and_preflight": run["seconds"] - (run["workflow_s"] or 0.0)}
    parts["registration_calls"] = registration
    ants_nodes = nodes.get("normalise", 0.0) + nodes.get("coregister", 0.0)
    parts["normalise_coregister_other"] = ants_nodes - registration
    for name in ("prepare", "resample", "crop", "embed", "sink"):
        parts[name] = nodes.get(name, 0.0)
    parts["nipype_other"] = (run["workflow_s"] or 0.0) - sum(nodes.values())
    return {k: round(v, 1) for k, v in parts.items()}
