"""A target declares the packages its tests need; the sandbox image gets them, built once
per package set, with no network inside the build."""

from __future__ import annotations

import pytest

from upgate.sandboxes.config import DockerSandboxConfig, get_sandbox
from upgate.sandboxes.images import ensure_target_image, target_image_tag

pytestmark = pytest.mark.real

PACKAGES = ("six==1.16.0",)


def test_declared_packages_are_importable_in_the_target_image(docker_engine: None) -> None:
    tag = ensure_target_image(PACKAGES)
    assert tag == target_image_tag(PACKAGES)
    assert ensure_target_image(PACKAGES) == tag  # cached by content hash
    with get_sandbox(DockerSandboxConfig(image=tag)) as box:
        ok = box.exec(["python3", "-c", "import six; print(six.__version__)"], timeout_s=60)
        assert ok.ok, ok.summary()
        assert ok.stdout.strip() == "1.16.0"
        # Still the hardened sandbox: no network, not root.
        who = box.exec(["id", "-u"], timeout_s=30)
        assert who.stdout.strip() == "1000"
    with get_sandbox(DockerSandboxConfig()) as plain:
        missing = plain.exec(["python3", "-c", "import six"], timeout_s=60)
        assert missing.exit_code != 0
