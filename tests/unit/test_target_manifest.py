"""Target-declared sandbox packages: pinned or refused, unsupported backends say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgate.app import target_sandbox_config
from upgate.config import load_manifest, load_settings
from upgate.errors import ConfigError, SandboxError
from upgate.sandboxes.config import FakeSandboxConfig, LocalSandboxConfig
from upgate.sandboxes.images import target_image_tag, target_requirements


def test_manifest_reads_sandbox_packages(workdir: Path) -> None:
    manifest = workdir / "target" / "upgate-target.toml"
    manifest.write_text(manifest.read_text().replace(
        'test_command = "python3 -m pytest -q tests"',
        'test_command = "python3 -m pytest -q tests"\nsandbox_packages = ["six==1.16.0"]'))
    assert load_manifest(workdir / "target").sandbox_packages == ("six==1.16.0",)


def test_packages_must_be_pinned_and_order_does_not_change_the_image() -> None:
    with pytest.raises(SandboxError, match="pinned"):
        target_requirements(("six",))
    assert target_requirements(("b==1", "a==2", "b==1")) == "a==2\nb==1\n"
    assert target_image_tag(("a==2", "b==1")) == target_image_tag(("b==1", "a==2"))
    assert target_image_tag(("a==2",)) != target_image_tag(("a==3",))


def test_the_local_backend_refuses_declared_packages(workdir: Path) -> None:
    settings = load_settings(workdir / "upgate.toml")
    local = settings.model_copy(update={"sandbox": LocalSandboxConfig()})
    with pytest.raises(ConfigError, match="cannot install"):
        target_sandbox_config(local, ("six==1.16.0",))
    assert isinstance(target_sandbox_config(settings, ("six==1.16.0",)), FakeSandboxConfig)
    assert target_sandbox_config(local, ()) == local.sandbox
