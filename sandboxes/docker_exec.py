"""How the Docker sandbox runs one command: the in-container wrapper script and the readers
of its output stream.

The wrapper runs the command under `timeout -s KILL`, then `kill -9 -1` so nothing it
started outlives it, and prints a marker line on stderr after a per-exec nonce: the exit
code, the cgroup counters of OOM kills and refused forks, and the CPU nanoseconds the
command used (the container's cgroup counter read before and after it). The readers keep
that marker out of the captured stderr and out of the lines an `on_output` listener gets.
"""

from __future__ import annotations

from typing import Any

from upgate.sandboxes.base import LineFeed, OnOutput, OutputCapture, truncation_marker

RD = r"""
rd() {
  _v=0; [ -r "$1" ] || return 0
  while read -r _k _n; do [ "$_k" = "$2" ] && _v=$_n; done < "$1"; return 0
}
"""
# Reads the cgroup v1 or v2 counters of OOM kills and refused forks into $m and $p, with
# shell builtins only: a fork bomb may have used up every pid.
COUNTERS = r"""
M=/sys/fs/cgroup/memory/memory.oom_control; [ -r $M ] || M=/sys/fs/cgroup/memory.events
P=/sys/fs/cgroup/pids/pids.events; [ -r $P ] || P=/sys/fs/cgroup/pids.events
rd $M oom_kill; m=$_v; rd $P max; p=$_v
"""
READ_COUNTERS = RD + COUNTERS
# The container's cgroup CPU usage in nanoseconds into $c (v2 cpu.stat, or v1 cpuacct),
# builtins only. Commands run one at a time and `kill -9 -1` ends all they started, so the
# difference around a command is that command's CPU time.
READ_CPU = r"""
cpu_ns() {
  c=0; A=/sys/fs/cgroup/cpuacct/cpuacct.usage
  if [ -r /sys/fs/cgroup/cpu.stat ]; then rd /sys/fs/cgroup/cpu.stat usage_usec; c=$((_v * 1000))
  elif [ -r $A ]; then read -r c < $A
  fi
}
"""
WRAPPER = r"""
n=$1; t=$2; shift 2
""" + RD + READ_CPU + r"""cpu_ns; c0=$c
timeout -s KILL "$t" "$@"; rc=$?
kill -9 -1 2>/dev/null
""" + COUNTERS + r"""cpu_ns
printf '\n%s %s %s %s %s\n' "$n" "$rc" "$m" "$p" "$((c - c0))" >&2
exit $rc
"""
PROBE = READ_COUNTERS + 'printf "%s %s" "$m" "$p"'
TAIL_BYTES = 512
class StderrCapture:
    """Stderr with the wrapper's trailing marker line held back from the kept text."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._head = OutputCapture(max_bytes + TAIL_BYTES)
        self._tail = b""

    def add(self, chunk: bytes) -> None:
        self._head.add(chunk)
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]

    def split(self, nonce: str) -> tuple[str, bool, tuple[int, int, int, int] | None]:
        """(stderr text, truncated, (rc, oom_kills, pids_max_events, cpu_ns) or None);
        cpu_ns is -1 where the cgroup's CPU counter could not be read."""
        marker_at = self._tail.rfind(b"\n" + nonce.encode() + b" ")
        marker: tuple[int, int, int, int] | None = None
        real_total = self._head.total
        if marker_at >= 0:
            fields = self._tail[marker_at:].split()
            try:
                cpu_ns = int(fields[4]) if len(fields) > 4 else -1
                marker = (int(fields[1]), int(fields[2]), int(fields[3]), cpu_ns)
                real_total -= len(self._tail) - marker_at
            except (IndexError, ValueError):
                marker = None
        kept = b"".join(self._head._parts)[: min(real_total, self.max_bytes)]
        text = kept.decode("utf-8", errors="replace")
        truncated = real_total > self.max_bytes
        return (text + truncation_marker(self.max_bytes) if truncated else text), truncated, marker


class WrapperLineFeed(LineFeed):
    """Output lines for a listener, without the wrapper's marker line at the end of stderr."""

    def __init__(self, callback: OnOutput | None, max_bytes: int, nonce: str) -> None:
        super().__init__(callback, max_bytes)
        self._marker = (nonce + " ").encode()
        self._held_blank = False

    def _cap(self, stream: str) -> int:
        # The marker line may follow a full cap of stderr: room for it, never delivered.
        return self.max_bytes + (TAIL_BYTES if stream == "stderr" else 0)

    def _deliver(self, stream: str, raw: bytes) -> None:
        if stream != "stderr":
            super()._deliver(stream, raw)
            return
        if raw.startswith(self._marker):
            self._held_blank = False  # the blank line printed before the marker
            return
        if self._held_blank:
            self._held_blank = False
            super()._deliver(stream, b"")
        if not raw:
            self._held_blank = True
            return
        super()._deliver(stream, raw)


def read_frames(sock: Any, out: OutputCapture, err: StderrCapture, feed: LineFeed) -> None:
    from docker.utils.socket import STDERR, STDOUT, frames_iter

    try:
        for stream, data in frames_iter(sock, tty=False):
            if stream == STDOUT:
                out.add(data)
                feed.feed("stdout", data)
            elif stream == STDERR:
                err.add(data)
                feed.feed("stderr", data)
    except (OSError, ValueError):
        return
