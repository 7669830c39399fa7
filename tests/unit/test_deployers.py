"""The deployment seam: each deployer deploys, verifies and rolls back idempotently by
deployment id, on real git and a real SQLite store (vLLM's admin endpoints by the shipped
double), and says so honestly when there is nothing to roll back to."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.deploy.base import Deployer
from upgate.deploy.git import GitDeployer
from upgate.deploy.lora_alias import LoraAliasDeployer
from upgate.deploy.registry import TARGET_BY_KIND, DeployParts, deployer_for
from upgate.deploy.testing import FakeVllmAdmin
from upgate.errors import DeployError
from upgate.hashing import sha256_tree
from upgate.records import Artifact, Candidate
from upgate.store import Store

from ..conftest import make_target_repo


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def prompt_candidate(repo: Path) -> Candidate:
    prompt = repo / "triage" / "prompt.txt"
    original = prompt.read_text()
    prompt.write_text(original + "Be brief.\n")
    diff = git(repo, "diff") + "\n"
    prompt.write_text(original)
    return Candidate(proposal_id="p", kind="prompt", diff=diff,
                     changed_paths=("triage/prompt.txt",))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state" / "upgate.db")
    yield s
    s.close()


def test_git_deployer_lands_a_branch_once_verifies_it_and_rolls_it_back(tmp_path: Path) -> None:
    repo = make_target_repo(tmp_path / "target")
    main_before = git(repo, "rev-parse", "main")
    deployer = GitDeployer(repo, base="main")
    candidate = prompt_candidate(repo)

    first = deployer.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: test")
    assert (first.target, first.branch, first.created) == ("git", "upgate/c1", True)
    again = deployer.deploy(candidate, "c1-abc", cycle_id="c1", message="upgate: test")
    assert (again.commit, again.created) == (first.commit, False)
    assert "Be brief." in git(repo, "show", f"{first.branch}:triage/prompt.txt")
    assert git(repo, "rev-parse", "main") == main_before
    assert deployer.verify(first).healthy

    with pytest.raises(DeployError, match="does not hold deployment"):
        deployer.deploy(candidate, "c1-other", cycle_id="c1", message="upgate: test")

    # Someone moves the branch: the deployment is no longer what is there.
    git(repo, "branch", "-f", "upgate/c1", "main")
    assert not deployer.verify(first).healthy

    assert deployer.rollback(first).status == "restored"
    assert deployer.rollback(first).status == "already_restored"
    assert "upgate/c1" not in git(repo, "branch", "--list")
    assert not deployer.verify(first).healthy


def adapter(tmp_path: Path, name: str) -> Candidate:
    folder = tmp_path / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    art = Artifact(name=f"triage@{name}", kind="adapter", path=str(folder),
                   sha256=sha256_tree(folder))
    return Candidate(proposal_id="p", kind="model", diff="", changed_paths=(),
                     artifacts=(art,))


def test_lora_alias_deployer_swaps_keeps_the_version_before_and_restores_it(
    tmp_path: Path, store: Store
) -> None:
    v0 = tmp_path / "adapters" / "v0"  # what the server was started with
    v0.mkdir(parents=True)
    (v0 / "adapter_config.json").write_text('{"r": 8}')
    admin = FakeVllmAdmin({"smollm2": "/base", "triage": str(v0)})
    deployer = LoraAliasDeployer(admin, store, "triage")
    cand = adapter(tmp_path, "aaaa")

    d = deployer.deploy(cand, "c1-aaaa", cycle_id="c1", message="m")
    assert d.previous is not None and d.previous["version_name"] == "triage@initial"
    assert admin.served["triage"] == cand.artifacts[0].path
    assert admin.served["triage@initial"] == str(v0)
    assert deployer.verify(d).healthy
    loads = len(admin.calls)
    assert deployer.deploy(cand, "c1-aaaa", cycle_id="c1", message="m") == d
    assert len(admin.calls) == loads

    admin.served["triage"] = "/elsewhere"
    assert not deployer.verify(d).healthy

    assert deployer.rollback(d).status == "restored"
    assert admin.served["triage"] == str(v0)
    assert store.active_version("triage")["version_name"] == "triage@initial"  # type: ignore[index]
    assert deployer.rollback(d).status == "already_restored"
    assert not deployer.verify(d).healthy


def test_rolling_back_with_no_version_before_restores_nothing_and_says_so(
    tmp_path: Path, store: Store
) -> None:
    admin = FakeVllmAdmin({"smollm2": "/base"})  # the alias served nothing before
    deployer = LoraAliasDeployer(admin, store, "triage")
    cand = adapter(tmp_path, "bbbb")
    d = deployer.deploy(cand, "c1-bbbb", cycle_id="c1", message="m")
    assert d.previous is None
    result = deployer.rollback(d)
    assert result.status == "nothing_to_restore" and not result.restored
    assert result.detail["still_serving"] == cand.artifacts[0].path
    assert admin.served["triage"] == cand.artifacts[0].path


def test_the_registry_picks_a_deployer_by_kind_and_by_recorded_target(
    tmp_path: Path, store: Store
) -> None:
    parts = DeployParts(repo=tmp_path, base_branch="main", store=store, admin=None,
                        alias="triage")
    picked: dict[str, Deployer] = {t: deployer_for(t, parts) for t in ("git", "vllm")}
    assert isinstance(picked["git"], GitDeployer)
    assert isinstance(picked["vllm"], LoraAliasDeployer)
    assert {k: picked[v].target for k, v in TARGET_BY_KIND.items()} == {
        "code": "git", "prompt": "git", "config": "git", "model": "vllm"}
    with pytest.raises(DeployError, match="no deployer for target 'blue'"):
        deployer_for("blue", parts)
    with pytest.raises(DeployError, match="no vLLM server"):
        picked["vllm"].deploy(adapter(tmp_path, "cccc"), "x", cycle_id="c", message="m")
