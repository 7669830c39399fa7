"""Sandbox images: content-hashed tags, built only when missing, with no network at build.

The host prepares a wheelhouse with `pip download` (the host's pip can reach the package
index; a build container cannot be relied on to) under `.cache/wheelhouse/`, and the
Dockerfile installs from it with `--no-index`.

    python -m upgate.sandboxes.images build [--kind sandbox|train] [--base-image IMAGE]

Builds run with no network (UPGATE_BUILD_NETWORK=default for a public base image that
must apt-get git).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from upgate.errors import SandboxError, SandboxUnavailableError
from upgate.progress import reporter

logger = logging.getLogger(__name__)

ImageKind = Literal["sandbox", "train"]

IMAGES_DIR = Path(__file__).resolve().parent / "images"
DEFAULT_BASE_IMAGE = "upgate-sandbox-base:bookworm"
REPOSITORIES: dict[str, str] = {"sandbox": "upgate-sandbox", "train": "upgate-train"}
SANDBOX_REQUIREMENTS = "pytest==9.2.0\n"
TRAIN_REQUIREMENTS_FILE = IMAGES_DIR / "train-requirements.txt"
TARGET_DOCKERFILE = IMAGES_DIR / "target.Dockerfile"


BUILD_STEP = re.compile(r"Step (\d{1,6})/(\d{1,6}) : (.*)")


def cache_dir() -> Path:
    """Where wheelhouses live: $UPGATE_CACHE_DIR, else the repo's .cache/, else ~/.cache/upgate."""
    if env := os.environ.get("UPGATE_CACHE_DIR"):
        return Path(env)
    repo_root = IMAGES_DIR.parent.parent
    if (repo_root / "pyproject.toml").is_file():
        return repo_root / ".cache"
    return Path.home() / ".cache" / "upgate"


def requirements(kind: ImageKind) -> str:
    """The pinned requirement lines installed into the image's venv."""
    if kind == "sandbox":
        return SANDBOX_REQUIREMENTS
    if not TRAIN_REQUIREMENTS_FILE.is_file():
        raise SandboxError(
            f"{TRAIN_REQUIREMENTS_FILE.name} is missing next to the Dockerfiles; "
            "it lists the pinned packages of the train image"
        )
    return TRAIN_REQUIREMENTS_FILE.read_text(encoding="utf-8")


def dockerfile(kind: ImageKind) -> Path:
    """The Dockerfile of an image kind."""
    return IMAGES_DIR / f"{kind}.Dockerfile"


def content_hash(kind: ImageKind, base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """sha256 of everything the image is built from (Dockerfile, requirements, parent)[:12]."""
    digest = hashlib.sha256()
    digest.update(dockerfile(kind).read_bytes())
    digest.update(b"\0" + requirements(kind).encode())
    parent = base_image if kind == "sandbox" else image_tag("sandbox", base_image)
    digest.update(b"\0" + parent.encode())
    return digest.hexdigest()[:12]


def image_tag(kind: ImageKind, base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """The content-hashed tag of an image kind, e.g. upgate-sandbox:0123456789ab."""
    return f"{REPOSITORIES[kind]}:{content_hash(kind, base_image)}"


def _image_exists(client: Any, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time across processes (parallel test workers share the cache)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "image-build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_image(
    kind: ImageKind = "sandbox",
    client: Any = None,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    force: bool = False,
) -> str:
    """The image's hashed tag, building it (and its parent) only when the tag is missing."""
    if client is None:
        from upgate.sandboxes.docker import docker_client

        client = docker_client()
    tag = image_tag(kind, base_image)
    if not force and _image_exists(client, tag):
        return tag
    with _build_lock():
        if not force and _image_exists(client, tag):
            return tag
        build_args: dict[str, str]
        if kind == "sandbox":
            if not _image_exists(client, base_image):
                raise SandboxUnavailableError(
                    f"base image {base_image} is missing; build it with "
                    "scripts/build_base_image.sh (no registry needed), or pass "
                    "--base-image python:3.11-slim-bookworm where a registry is reachable"
                )
            build_args = {"BASE_IMAGE": base_image}
        else:
            build_args = {"SANDBOX_IMAGE": ensure_image("sandbox", client, base_image=base_image)}
        _build(client, kind, tag, build_args, base_image)
    return tag


def prepare_wheelhouse(kind: ImageKind, base_image: str = DEFAULT_BASE_IMAGE) -> Path:
    """Download the image's wheels (with dependencies) on the host; reused when complete."""
    folder = cache_dir() / "wheelhouse" / f"{kind}-{content_hash(kind, base_image)}"
    logger.info("wheels for the %s image: %s", kind, folder)
    return _download_wheels(folder, requirements(kind), f"the {kind} image")


def _build(
    client: Any, kind: ImageKind, tag: str, build_args: dict[str, str], base_image: str
) -> None:
    _build_context(client, dockerfile(kind), requirements(kind),
                   prepare_wheelhouse(kind, base_image), tag, build_args, kind)
    repo = REPOSITORIES[kind]
    client.images.get(tag).tag(repo, "latest")
    logger.info("built %s (also tagged %s:latest)", tag, repo)


def _download_wheels(folder: Path, reqs: str, what: str) -> Path:
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    req = folder / "requirements.txt"
    req.write_text(reqs, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
         "--only-binary=:all:", "-d", str(folder), "-r", str(req)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SandboxError(
            f"pip download for {what} failed (is the package index reachable from this "
            f"host, and is every package pinned to a version with a wheel?):\n"
            f"{proc.stderr[-3000:]}"
        )
    done.write_text("ok\n")
    return folder


def target_requirements(packages: tuple[str, ...]) -> str:
    """The requirement lines of a target's declared packages; each must be pinned."""
    loose = [p for p in packages if "==" not in p]
    if loose:
        raise SandboxError(
            f"sandbox_packages must be pinned (name==version) so the image is reproducible: "
            f"{', '.join(loose)}"
        )
    return "".join(f"{p.strip()}\n" for p in sorted(set(packages)))


def target_image_tag(packages: tuple[str, ...], base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """The content-hashed tag of the sandbox image extended with a target's packages."""
    digest = hashlib.sha256()
    digest.update(TARGET_DOCKERFILE.read_bytes())
    digest.update(b"\0" + target_requirements(packages).encode())
    digest.update(b"\0" + image_tag("sandbox", base_image).encode())
    return f"upgate-target:{digest.hexdigest()[:12]}"


def ensure_target_image(
    packages: tuple[str, ...], client: Any = None, *, base_image: str = DEFAULT_BASE_IMAGE
) -> str:
    """The sandbox image with a target's declared packages, built once per package set."""
    if not packages:
        return ensure_image("sandbox", client, base_image=base_image)
    if client is None:
        from upgate.sandboxes.docker import docker_client

        client = docker_client()
    tag = target_image_tag(packages, base_image)
    if _image_exists(client, tag):
        return tag
    with _build_lock():
        if _image_exists(client, tag):
            return tag
        parent = ensure_image("sandbox", client, base_image=base_image)
        reqs = target_requirements(packages)
        wheels = _download_wheels(
            cache_dir() / "wheelhouse" / f"target-{tag.split(':')[1]}", reqs,
            "the target's sandbox packages",
        )
        _build_context(client, TARGET_DOCKERFILE, reqs, wheels, tag,
                       {"SANDBOX_IMAGE": parent}, "target")
    return tag


def _build_context(
    client: Any, docker_file: Path, reqs: str, wheels: Path, tag: str,
    build_args: dict[str, str], label: str,
) -> None:
    with tempfile.TemporaryDirectory(prefix="upgate-build-") as tmp:
        context = Path(tmp)
        shutil.copy(docker_file, context / "Dockerfile")
        (context / "requirements.txt").write_text(reqs, encoding="utf-8")
        (context / "wheels").mkdir()
        for wheel in wheels.glob("*.whl"):
            _link_or_copy(wheel, context / "wheels" / wheel.name)
        logger.info("building %s (this takes a while the first time)", tag)
        log: list[str] = []
        report = reporter()
        for event in client.api.build(
            path=str(context),
            tag=tag,
            buildargs=build_args,
            rm=True,
            forcerm=True,
            decode=True,
            labels={"upgate.image": label},
            # Nothing is fetched at build time; a public base lacking git needs "default".
            network_mode=os.environ.get("UPGATE_BUILD_NETWORK", "none"),
        ):
            if "stream" in event:
                log.append(str(event["stream"]))
                step = build_step(str(event["stream"]))
                if step is not None:
                    report("build", step[0], step[1], detail=f"{label}: {step[2]}")
            if "error" in event:
                tail = "".join(log)[-3000:]
                raise SandboxError(f"building {tag} failed: {event['error']}\n{tail}")


def build_step(text: str) -> tuple[int, int, str] | None:
    """(step, of steps, instruction) from a line of the engine's build stream, if it is a
    `Step N/M : INSTRUCTION` line."""
    found = BUILD_STEP.match(text.strip())
    if found is None:
        return None
    return int(found[1]), int(found[2]), found[3][:80]


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def main(argv: list[str] | None = None) -> int:
    """Command line: build an image kind if its hashed tag is missing; print the tag."""
    parser = argparse.ArgumentParser(prog="python -m upgate.sandboxes.images")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the image if its content-hashed tag is missing")
    build.add_argument("--kind", choices=["sandbox", "train"], default="sandbox")
    build.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    build.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    sub.add_parser("tag", help="print the content-hashed tags without building")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "tag":
        for kind in ("sandbox", "train"):
            try:
                print(image_tag(kind))
            except SandboxError as exc:
                print(f"{kind}: {exc}", file=sys.stderr)
        return 0
    print(ensure_image(args.kind, base_image=args.base_image, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
