"""Sandbox backend configuration: one pydantic model per backend, chosen by `type`.

`get_sandbox` imports the chosen backend lazily, so a machine without the docker SDK or
bubblewrap can still load the configuration and use the other backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from upgate.sandboxes.base import Mount, Sandbox

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
"""Per stream; beyond it the output is cut and marked (limits_hit contains "output")."""


class _BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_timeout_s: float = Field(default=60.0, gt=0)
    max_output_bytes: int = Field(default=DEFAULT_MAX_OUTPUT_BYTES, gt=0)


class DockerSandboxConfig(_BackendConfig):
    """A hardened container per sandbox (the default backend)."""

    type: Literal["docker"] = "docker"
    image: str | None = Field(
        default=None,
        description="Image to run; None means the content-hashed sandbox image, built if missing.",
    )
    image_kind: Literal["sandbox", "train"] = "sandbox"
    memory: str = "512m"
    cpus: float = Field(default=1.0, gt=0)
    pids: int = Field(default=128, gt=8)
    workspace_size: str = "256m"
    tmp_size: str = "64m"
    network: Literal["none"] = Field(
        default="none", description="Only 'none' for now; an allow-listed route is a policy opt-in."
    )
    host_kill_grace_s: float = Field(
        default=5.0, gt=0, description="How long past the timeout the host waits before killing."
    )


class LocalSandboxConfig(_BackendConfig):
    """bubblewrap on the host kernel, for machines with no Docker engine (weaker isolation)."""

    type: Literal["local"] = "local"
    memory: str = Field(
        default="1g", description="RLIMIT_AS (address space), not a cgroup limit."
    )
    pids: int = Field(
        default=256, gt=8, description="RLIMIT_NPROC; not enforced when run as root."
    )
    max_file_size: str = Field(default="256m", description="RLIMIT_FSIZE per file written.")
    tmp_size: str = "64m"


class FakeSandboxConfig(_BackendConfig):
    """A host temp dir and plain subprocesses: NO isolation; for unit tests of logic."""

    type: Literal["fake"] = "fake"


SandboxConfig = Annotated[
    DockerSandboxConfig | LocalSandboxConfig | FakeSandboxConfig,
    Field(discriminator="type"),
]


def parse_size(text: str) -> int:
    """Bytes in a Docker-style size ('512m', '1g', '65536', '2k')."""
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    raw = text.strip().lower()
    if raw and raw[-1] in units:
        number, unit = raw[:-1], units[raw[-1]]
    else:
        number, unit = raw, 1
    try:
        value = float(number)
    except ValueError:
        from upgate.errors import ConfigError

        raise ConfigError(f"size {text!r} is not a size; write it like '512m' or '1g'") from None
    return int(value * unit)


def get_sandbox(
    config: DockerSandboxConfig | LocalSandboxConfig | FakeSandboxConfig,
    mounts: Sequence[Mount] = (),
) -> Sandbox:
    """A new, not yet started sandbox for `config` (the backend module is imported here)."""
    if isinstance(config, DockerSandboxConfig):
        from upgate.sandboxes.docker import DockerSandbox

        return DockerSandbox(config, mounts)
    if isinstance(config, LocalSandboxConfig):
        from upgate.sandboxes.local import LocalSandbox

        return LocalSandbox(config, mounts)
    from upgate.sandboxes.fake import FakeSandbox

    return FakeSandbox(config, mounts)
