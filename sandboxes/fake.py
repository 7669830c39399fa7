"""FakeSandbox: a host temp dir and plain subprocesses. NO isolation at all.

It exists for unit tests of logic that needs a `Sandbox` (the coder's tools, diff handling,
the CLI) on any machine, in milliseconds. Never run untrusted code in it: commands run as
you, on your machine, with your files and your network. Use the docker backend (or the
local bubblewrap backend) for anything an agent wrote.
"""

from __future__ import annotations

from upgate.sandboxes.hostdir import HostDirSandbox


class FakeSandbox(HostDirSandbox):
    """Test double: a temp dir and subprocesses on the host. NO isolation; unit tests only."""

    def describe(self) -> str:
        """What this backend isolates: nothing."""
        return (
            "fake sandbox: commands run as the current user on the host with no isolation "
            "(files, network and processes are all shared); for unit tests of logic only"
        )
