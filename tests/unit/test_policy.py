"""The policy: load errors name the file and key; what it does not name is not allowed; a
served-model change always needs a human; some paths no policy can unprotect; its version
id follows its content (invariants 1, 2 and 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgate.errors import PolicyError
from upgate.policy import ALWAYS_PROTECTED, Policy, load_policy

from ..conftest import POLICY, REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_the_test_and_bundled_policies_load(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, POLICY))
    assert policy.approvers == ("bob", "carol")
    assert policy.rule("code").allowed
    bundled = load_policy(REPO / "examples" / "policy.toml")
    assert bundled.version_id.startswith("example@1+")


def test_a_missing_policy_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone.toml"
    with pytest.raises(PolicyError) as exc:
        load_policy(missing)
    assert str(missing) in str(exc.value) and "`policy`" in str(exc.value)


def test_bad_toml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x\nversion = "1"\n')
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert str(path) in str(exc.value) and "not valid TOML" in str(exc.value)


@pytest.mark.parametrize(("text", "key"), [
    ('version = "1"\n', "name"),
    ('name = "p"\nversion = "1"\naprovers = ["bob"]\n', "aprovers"),
    ('name = "p"\nversion = "1"\n[kinds.code]\napproval = "sometimes"\n', "kinds.code.approval"),
    ('name = "p"\nversion = "1"\n[kinds.code]\nalowed = true\n', "kinds.code.alowed"),
    ('name = "p"\nversion = "1"\n[kinds.code]\nchecks = ["vibes"]\n', "kinds.code.checks"),
    ('name = "p"\nversion = "1"\n[kinds.weights]\nallowed = true\n', "kinds.weights"),
    ('name = "p"\nversion = "1"\n[thresholds]\napproval_ttl_hours = 0\n',
     "thresholds.approval_ttl_hours"),
    ('name = "p"\nversion = "1"\n[thresholds]\napproval_ttl_hours = 100000\n',
     "thresholds.approval_ttl_hours"),
    ('name = "p"\nversion = "1"\n[thresholds]\nmin_gain = nan\n', "thresholds.min_gain"),
])
def test_an_invalid_policy_names_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert str(path) in str(exc.value)
    assert key in str(exc.value)


def test_a_content_hash_in_the_file_cannot_forge_the_version_id(tmp_path: Path) -> None:
    honest = load_policy(write(tmp_path, 'name = "p"\nversion = "1"\n')).version_id
    forged = load_policy(write(
        tmp_path, f'name = "p"\nversion = "1"\ncontent_hash = "{honest[-12:]}"\n'))
    assert forged.version_id != honest
    assert forged.content_hash != honest[-12:]


def test_kinds_the_file_does_not_name_are_not_allowed(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, 'name = "p"\nversion = "1"\n[kinds.code]\n'))
    assert policy.rule("code").allowed
    for kind in ("prompt", "config", "model"):
        assert not policy.rule(kind).allowed
    empty = load_policy(write(tmp_path, 'name = "p"\nversion = "1"\n'))
    assert not any(empty.rule(k).allowed for k in ("code", "prompt", "config", "model"))


def test_a_served_model_change_always_needs_a_human(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, POLICY))  # says approval = "auto" for model
    assert policy.rule("model").approval == "auto"
    assert policy.requires_approval("model")
    # Nor can a policy built in code, or one that names no kinds, lift it.
    built = Policy(name="p", version="1", kinds={"model": {"approval": "auto"}})  # type: ignore[dict-item]
    assert built.requires_approval("model")
    assert Policy(name="p", version="1").requires_approval("model")


def test_auto_approval_holds_for_other_kinds_only_where_the_policy_says(tmp_path: Path) -> None:
    policy = load_policy(write(
        tmp_path, 'name = "p"\nversion = "1"\n[kinds.prompt]\napproval = "auto"\n[kinds.code]\n'))
    assert not policy.requires_approval("prompt")
    assert policy.requires_approval("code")  # the default is "required"
    assert policy.requires_approval("config")  # not named: not allowed, and never auto


@pytest.mark.parametrize("path", [
    "upgate-target.toml", ".git/config", ".git/hooks/pre-commit", ".git",
    ".upgate/ledger.sqlite", ".upgate/secret.key",
])
def test_always_protected_paths_cannot_be_lifted(tmp_path: Path, path: str) -> None:
    lifted = load_policy(write(tmp_path, 'name = "p"\nversion = "1"\nprotected_paths = []\n'))
    assert lifted.protected_paths == ()
    assert lifted.protected_hits([path]) == [path]
    assert set(ALWAYS_PROTECTED) <= set(lifted.all_protected())


def test_always_protected_paths_are_not_duplicated(tmp_path: Path) -> None:
    policy = load_policy(write(
        tmp_path, 'name = "p"\nversion = "1"\nprotected_paths = ["upgate-target.toml"]\n'))
    assert policy.all_protected().count("upgate-target.toml") == 1


@pytest.mark.parametrize("path", [
    "tests/test_a.py", "tests/unit/deep/er/test_b.py", "tests/conftest.py", "tests",
    "tests/data/case.jsonl",
])
def test_tests_glob_matches_nested_paths(tmp_path: Path, path: str) -> None:
    policy = load_policy(write(tmp_path, POLICY))
    assert policy.protected_hits([path]) == [path]


@pytest.mark.parametrize("path", [
    "triage/classify.py", "testsuite/x.py", "my_tests/test_a.py", "triage/tests.py",
    "upgate-target.toml.bak", ".gitignore", "sub/.gitkeep",
])
def test_unprotected_paths_are_not_hit(tmp_path: Path, path: str) -> None:
    policy = load_policy(write(tmp_path, POLICY))
    assert policy.protected_hits([path]) == []


def test_protected_hits_returns_every_hit_in_order(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, POLICY))
    paths = ["triage/a.py", "tests/x.py", "README.md", "upgate-target.toml"]
    assert policy.protected_hits(paths) == ["tests/x.py", "upgate-target.toml"]


def test_version_id_follows_the_content(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY)
    first = load_policy(path).version_id
    assert first.startswith("test@1+") and len(first) == len("test@1+") + 12
    assert load_policy(path).version_id == first  # deterministic
    # Same declared name and version, one changed threshold: a different id.
    path.write_text(POLICY.replace("max_revisions = 1", "max_revisions = 2"))
    second = load_policy(path).version_id
    assert second.startswith("test@1+") and second != first
    # Even a comment changes it: the id binds the exact text that was in force.
    path.write_text(POLICY + "# note\n")
    assert load_policy(path).version_id not in (first, second)
