"""Settings and the target manifest: every error names the key and says how to fix it;
the environment wins over the file; relative paths follow the file, not the caller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from upgate.config import (
    DEFAULT_CONFIG_NAME,
    TARGET_MANIFEST,
    find_config,
    load_manifest,
    load_settings,
)
from upgate.errors import ConfigError

from ..conftest import EXAMPLE_TARGET, write_config

PROPOSER = '[agents.proposer]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "scripted"\n'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No UPGATE_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.startswith("UPGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    assert PROPOSER in path.read_text()  # the edits below rely on this layout
    return path


def edit(cfg: Path, old: str, new: str) -> None:
    text = cfg.read_text()
    assert old in text, f"{old!r} not in the config"
    cfg.write_text(text.replace(old, new, 1))


def flat(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return " ".join(str(exc.value).split())


def test_the_test_config_loads(cfg: Path) -> None:
    settings = load_settings(cfg)
    assert settings.agents.proposer.model == "scripted"
    assert settings.operator == "alice"


def test_a_missing_required_key_is_named_with_how_to_set_it(cfg: Path) -> None:
    edit(cfg, PROPOSER, '[agents.proposer]\nbase_url = "http://127.0.0.1:9/v1"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    msg = flat(exc)
    assert "agents.proposer.model" in msg
    assert "set `model` under [agents.proposer]" in msg
    assert "UPGATE_AGENTS__PROPOSER__MODEL" in msg
    assert str(cfg) in msg
    # Only the key that is missing is blamed.
    assert "agents.coder" not in msg and "agents.critic" not in msg


def test_a_missing_top_level_key_is_named(cfg: Path) -> None:
    edit(cfg, 'policy = "policy.toml"\n', "")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert "set `policy = ...` at the top of the file, or UPGATE_POLICY" in flat(exc)


@pytest.mark.parametrize(("old", "new", "key"), [
    ('operator = "alice"', 'operater = "alice"', "operater"),
    ('model = "scripted"\n', 'model = "scripted"\nmodle = "x"\n', "agents.proposer.modle"),
    ('[serving]\n', '[serving]\nbase_ur = "http://x"\n', "serving.base_ur"),
    ('[target]\n', '[target]\nsuit = "x"\n', "target.suit"),
])
def test_an_unknown_key_is_named(cfg: Path, old: str, new: str, key: str) -> None:
    edit(cfg, old, new)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    msg = flat(exc)
    assert f"{key}:" in msg
    assert "not a setting" in msg


def test_an_unknown_nested_environment_variable_is_named(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPGATE_AGENTS__PROPOSER__MODLE", "x")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert "agents.proposer.modle" in flat(exc)


@pytest.mark.parametrize("url", ["127.0.0.1:9/v1", "ftp://127.0.0.1/v1", "", "localhost"])
def test_a_bad_base_url_is_named(cfg: Path, url: str) -> None:
    edit(cfg, PROPOSER, PROPOSER.replace("http://127.0.0.1:9/v1", url))
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    msg = flat(exc)
    assert "agents.proposer.base_url" in msg
    assert "http://" in msg and "UPGATE_AGENTS__PROPOSER__BASE_URL" in msg


def test_a_trailing_slash_is_dropped_from_base_url(cfg: Path) -> None:
    edit(cfg, PROPOSER, PROPOSER.replace("/v1", "/v1/"))
    assert load_settings(cfg).agents.proposer.base_url == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(("old", "new", "key"), [
    ("output_retries = 1", "output_retries = 99", "agents.proposer.output_retries"),
    ('model = "scripted"\n', 'model = "scripted"\ntemperature = -1\n',
     "agents.proposer.temperature"),
    ('[sandbox]\ntype = "fake"', '[sandbox]\ntype = "vm"', "sandbox"),
    ('operator = "alice"', 'operator = "alice"\nmode = "yolo"', "mode"),
])
def test_a_bad_value_is_named(cfg: Path, old: str, new: str, key: str) -> None:
    edit(cfg, old, new)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert key in flat(exc)


def test_the_environment_overrides_the_file(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPGATE_AGENTS__PROPOSER__MODEL", "from-env")
    monkeypatch.setenv("UPGATE_OPERATOR", "erin")
    settings = load_settings(cfg)
    assert settings.agents.proposer.model == "from-env"
    assert settings.operator == "erin"
    # Only the named key changes; the rest of the table still comes from the file.
    assert settings.agents.proposer.base_url == "http://127.0.0.1:9/v1"
    assert settings.agents.proposer.output_retries == 1
    assert settings.agents.coder.model == "scripted"


def test_the_environment_fills_a_key_the_file_lacks(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit(cfg, PROPOSER, '[agents.proposer]\nbase_url = "http://127.0.0.1:9/v1"\n')
    monkeypatch.setenv("UPGATE_AGENTS__PROPOSER__MODEL", "from-env")
    assert load_settings(cfg).agents.proposer.model == "from-env"


def test_relative_paths_follow_the_config_file_not_the_working_directory(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(cfg)
    root = cfg.parent.resolve()
    assert settings.state_dir == root / "state"
    assert settings.policy == root / "policy.toml"
    assert settings.target.path == root / "target"
    # An absolute path stays as written.
    assert settings.target.suite.is_absolute()
    assert "elsewhere" not in str(settings.state_dir)


def test_a_relative_config_path_still_resolves_against_its_folder(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path(cfg.name))
    assert settings.policy == tmp_path.resolve() / "policy.toml"


def test_a_missing_config_file_says_how_to_create_one(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_settings(missing)
    msg = flat(exc)
    assert str(missing) in msg and "not found" in msg
    assert "--config" in msg and "UPGATE_CONFIG" in msg and DEFAULT_CONFIG_NAME in msg


def test_without_a_path_the_working_directory_is_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        find_config()
    assert str(tmp_path / DEFAULT_CONFIG_NAME) in flat(exc)
    write_config(tmp_path)
    assert find_config() == tmp_path / DEFAULT_CONFIG_NAME


def test_upgate_config_names_the_file(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("UPGATE_CONFIG", str(cfg))
    assert find_config() == cfg
    monkeypatch.setenv("UPGATE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml"):
        find_config()


def test_a_config_folder_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path)


def test_bad_toml_names_the_file(cfg: Path) -> None:
    edit(cfg, 'operator = "alice"', 'operator = "alice')
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert str(cfg) in flat(exc) and "not valid TOML" in flat(exc)


# The target manifest ---------------------------------------------------------------------


def test_the_example_manifest_loads() -> None:
    manifest = load_manifest(EXAMPLE_TARGET)
    assert manifest.name == "ticket-triage"
    assert manifest.test_command
    assert manifest.model_alias == "triage"
    assert "few_shot" in manifest.recipes


def test_a_missing_manifest_says_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_manifest(tmp_path)
    msg = flat(exc)
    assert str(tmp_path / TARGET_MANIFEST) in msg
    assert "name" in msg and "test_command" in msg


def test_a_manifest_without_test_command_is_named(tmp_path: Path) -> None:
    (tmp_path / TARGET_MANIFEST).write_text('[target]\nname = "t"\n')
    with pytest.raises(ConfigError) as exc:
        load_manifest(tmp_path)
    assert "test_command" in flat(exc) and str(tmp_path / TARGET_MANIFEST) in flat(exc)


def test_a_manifest_with_bad_toml_is_named(tmp_path: Path) -> None:
    (tmp_path / TARGET_MANIFEST).write_text("[target\nname = 't'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_manifest(tmp_path)


def test_a_manifest_with_a_wrongly_typed_value_is_named(tmp_path: Path) -> None:
    (tmp_path / TARGET_MANIFEST).write_text(
        '[target]\nname = "t"\ntest_command = "true"\n[recipes]\nallowed = "few_shot"\n')
    with pytest.raises(ConfigError, match="recipes"):
        load_manifest(tmp_path)


def test_a_misspelt_manifest_key_is_named(tmp_path: Path) -> None:
    (tmp_path / TARGET_MANIFEST).write_text(
        '[target]\nname = "t"\ntest_command = "true"\n[model]\nalais = "triage"\n')
    with pytest.raises(ConfigError, match=r"model\.alais"):
        load_manifest(tmp_path)
