"""upgate.sandboxes: one `Sandbox` interface; docker (default), local (bubblewrap), fake.

    from upgate.sandboxes import DockerSandboxConfig, get_sandbox
    with get_sandbox(DockerSandboxConfig()) as sandbox:
        sandbox.copy_in(repo)
        result = sandbox.exec("python -m pytest -q", timeout_s=120)
        patch = sandbox.diff()

Backends are imported lazily by `get_sandbox`, so importing this package needs neither
the docker SDK nor bubblewrap.
"""

from upgate.sandboxes.base import WORKSPACE, ExecResult, LimitName, Mount, Sandbox
from upgate.sandboxes.config import (
    DockerSandboxConfig,
    FakeSandboxConfig,
    LocalSandboxConfig,
    SandboxConfig,
    get_sandbox,
)

__all__ = [
    "WORKSPACE",
    "DockerSandboxConfig",
    "ExecResult",
    "FakeSandboxConfig",
    "LimitName",
    "LocalSandboxConfig",
    "Mount",
    "Sandbox",
    "SandboxConfig",
    "get_sandbox",
]
