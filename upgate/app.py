"""Wiring: build the run-scoped dependencies from settings, once, at the entry point."""

from __future__ import annotations

from pathlib import Path

from langchain_core.language_models import BaseChatModel

from upgate.agents.models import chat_model
from upgate.approvals import secret_key
from upgate.config import Settings, load_manifest
from upgate.deploy.vllm import VllmAdmin
from upgate.errors import ConfigError
from upgate.evals.harness import CachingHarness, ChatChoiceHarness
from upgate.evals.suite import load_suite
from upgate.graphs.deps import Deps
from upgate.ledger import open_ledger
from upgate.policy import load_policy
from upgate.sandboxes.base import Mount, Sandbox
from upgate.sandboxes.config import (
    DockerSandboxConfig,
    FakeSandboxConfig,
    LocalSandboxConfig,
    get_sandbox,
)
from upgate.store import Store


def train_config(
    settings: Settings,
) -> DockerSandboxConfig | LocalSandboxConfig | FakeSandboxConfig:
    """The sandbox config for training jobs: the training image, more memory and cores."""
    cfg = settings.sandbox
    if isinstance(cfg, DockerSandboxConfig):
        return cfg.model_copy(update={"image_kind": "train", "image": None, "memory": "6g",
                                      "cpus": 2.0, "tmp_size": "1g",
                                      "workspace_size": "1g"})
    return cfg


def target_sandbox_config(
    settings: Settings, packages: tuple[str, ...]
) -> DockerSandboxConfig | LocalSandboxConfig | FakeSandboxConfig:
    """The sandbox config for the target's own runs: its declared packages in the image."""
    cfg = settings.sandbox
    if not packages:
        return cfg
    if isinstance(cfg, DockerSandboxConfig):
        if cfg.image is not None:
            return cfg  # an operator-chosen image is taken as already holding them
        from upgate.sandboxes.images import ensure_target_image

        return cfg.model_copy(update={"image": ensure_target_image(packages)})
    if isinstance(cfg, LocalSandboxConfig):
        raise ConfigError(
            "the target declares sandbox_packages, which the local (bubblewrap) backend "
            "cannot install; use the docker backend ([sandbox] type = \"docker\")"
        )
    return cfg  # the fake backend runs on the host's own Python: tests of logic only


def build_deps(
    settings: Settings,
    *,
    models: dict[str, BaseChatModel] | None = None,
    harness: ChatChoiceHarness | None = None,
    admin: VllmAdmin | None = None,
) -> Deps:
    """Everything a cycle needs; tests pass scripted models and a scripted harness."""
    if not (settings.target.path / ".git").exists():
        raise ConfigError(
            f"target.path {settings.target.path} is not a git repository; point it at the "
            "target's repository (upgate deploys changes there as new branches)"
        )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    models = models or {
        name: chat_model(getattr(settings.agents, name))
        for name in ("proposer", "coder", "critic")
    }
    manifest = load_manifest(settings.target.path)
    train_cfg = train_config(settings)
    target_cfg: list[DockerSandboxConfig | LocalSandboxConfig | FakeSandboxConfig] = []

    def sandbox(mounts: list[Mount]) -> Sandbox:
        if not target_cfg:  # resolved on first use: building an image takes a while
            target_cfg.append(target_sandbox_config(settings, manifest.sandbox_packages))
        return get_sandbox(target_cfg[0], mounts)

    def train_sandbox(mounts: list[Mount]) -> Sandbox:
        return get_sandbox(train_cfg, mounts)

    if admin is None and manifest.model_alias:
        admin = VllmAdmin(settings.serving.base_url)
    store = Store(settings.state_dir / "state.sqlite")

    def served_version(model: str) -> str:
        # What a served name stands for now: the alias moves with every deploy.
        if model == manifest.model_alias:
            active = store.active_version(model)
            return str(active["version_name"]) if active else "initial"
        return model

    return Deps(
        settings=settings,
        policy=load_policy(settings.policy),
        ledger=open_ledger(settings.state_dir, settings.witness),
        store=store,
        manifest=manifest,
        suite=load_suite(Path(settings.target.suite)),
        proposer=models["proposer"],
        coder=models["coder"],
        critic=models["critic"],
        sandbox=sandbox,
        train_sandbox=train_sandbox,
        harness=CachingHarness(harness or ChatChoiceHarness(), served_version),
        admin=admin,
        secret=secret_key(settings.state_dir),
    )
