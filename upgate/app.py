"""Wiring: build the run-scoped dependencies from settings, once, at the entry point.

The policy cycles run under is the one adopted (admin-signed) in the state, never merely
the file the configuration or `UPGATE_POLICY` names: a file that differs is refused for
cycles. The fake sandbox (no isolation) is refused unless test code set
`upgate.guard.ALLOW_FAKE_SANDBOX` in-process (the test suite's conftest does); no setting
or environment variable turns it on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from upgate import guard
from upgate.admin import replay
from upgate.agents.models import chat_model
from upgate.config import Settings, load_manifest
from upgate.deploy.vllm import VllmAdmin
from upgate.errors import ConfigError, PolicyError
from upgate.evals.harness import CachingHarness, ChatChoiceHarness
from upgate.evals.suite import load_suite
from upgate.graphs.deps import Deps
from upgate.ledger import Ledger, open_ledger
from upgate.policy import Policy, load_policy
from upgate.sandboxes.base import Mount, Sandbox
from upgate.sandboxes.config import (
    DockerSandboxConfig,
    FakeSandboxConfig,
    LocalSandboxConfig,
    get_sandbox,
)
from upgate.store import Store

log = logging.getLogger(__name__)


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


def require_isolating_sandbox(settings: Settings) -> None:
    """Refuse the fake sandbox unless test code allowed it in-process."""
    if settings.sandbox.type == "fake" and not guard.ALLOW_FAKE_SANDBOX:
        raise ConfigError(
            "sandbox.type = \"fake\" runs candidate code on this machine with no isolation "
            "and is for upgate's own tests only; use \"docker\" (or \"local\") in the "
            "config or UPGATE_SANDBOX__TYPE"
        )


def policy_in_force(settings: Settings, store: Store, ledger: Ledger, *,
                    strict: bool = True) -> Policy:
    """The adopted policy; with `strict` (starting or resuming cycles) the configured file
    must be exactly it, else the caller is told to adopt the file first."""
    adopted = replay(store, ledger).policy
    if adopted is None:
        raise ConfigError(
            f"the state in {settings.state_dir} has no adopted policy: create it with "
            "`upgate init --admin NAME` (the first admin), which adopts the configured policy"
        )
    try:
        configured = load_policy(settings.policy)
    except PolicyError:
        if strict:
            raise
        return adopted
    if configured.content_hash != adopted.content_hash:
        message = (
            f"the policy file {settings.policy} ({configured.version_id}) is not the adopted "
            f"policy ({adopted.version_id}); cycles run only under the adopted one. An admin "
            f"adopts the file with `upgate policy adopt {settings.policy} --as ADMIN`"
        )
        if strict:
            raise PolicyError(message)
        log.warning("%s", message)
    return adopted


def build_deps(
    settings: Settings,
    *,
    models: dict[str, BaseChatModel] | None = None,
    harness: ChatChoiceHarness | None = None,
    admin: VllmAdmin | None = None,
    for_cycles: bool = True,
) -> Deps:
    """Everything a cycle needs; tests pass scripted models and a scripted harness.

    `for_cycles=False` (deciding, cancelling, listing) takes the adopted policy even when
    the configured file has drifted, so a waiting cycle can always be rejected.
    """
    require_isolating_sandbox(settings)
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
    ledger = open_ledger(settings.state_dir, settings.witness)
    policy = policy_in_force(settings, store, ledger, strict=for_cycles)

    def served_version(model: str) -> str:
        # What a served name stands for now: the alias moves with every deploy.
        if model == manifest.model_alias:
            active = store.active_version(model)
            return str(active["version_name"]) if active else "initial"
        return model

    return Deps(
        settings=settings,
        policy=policy,
        ledger=ledger,
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
    )
