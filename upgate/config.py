"""One settings object: a TOML file plus `UPGATE_*` environment variables.

Environment variables override the file; nested keys use `__`
(`UPGATE_AGENTS__PROPOSER__BASE_URL`). Relative paths in the file are relative to the
file's folder. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from upgate.deploy.vllm_servers import LauncherConfig
from upgate.errors import ConfigError
from upgate.notify.config import NotifySettings
from upgate.sandboxes.config import DockerSandboxConfig, SandboxConfig
from upgate.witness import WitnessConfig

DEFAULT_CONFIG_NAME = "upgate.toml"
TARGET_MANIFEST = "upgate-target.toml"


class EndpointConfig(BaseModel):
    """An OpenAI-compatible endpoint and model for one agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    model: str
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself)."""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=16)
    timeout_s: float = Field(default=120.0, gt=0)
    output_retries: int = Field(default=2, ge=0, le=10)
    """How many times malformed output is retried before the cycle fails."""

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (e.g. http://127.0.0.1:8011/v1)")
        return value.rstrip("/")

    def api_key(self) -> str:
        """The API key from its environment variable, or a placeholder for local servers."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(
                    f"environment variable {self.api_key_env} (named by api_key_env) is empty; "
                    "export it or remove api_key_env for a local server"
                )
            return key
        return "EMPTY"


class AgentsConfig(BaseModel):
    """Which endpoint and model each agent uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proposer: EndpointConfig
    coder: EndpointConfig
    critic: EndpointConfig


class TargetConfig(BaseModel):
    """The target: a git repository and the eval suite that judges it (kept outside it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    suite: Path
    hidden_tests: Path | None = None
    """Tests the owner keeps outside the target; only the critic runs them, in the sandbox."""
    base_branch: str = "main"


class ServingConfig(BaseModel):
    """The vLLM server that serves the target's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = "http://127.0.0.1:8011"
    """Server root (no /v1)."""
    base_model_path: Path | None = None
    """The base model's folder, mounted read-only into training sandboxes."""

    @property
    def openai_url(self) -> str:
        """The OpenAI-compatible API root."""
        return self.base_url.rstrip("/") + "/v1"


class GatewayConfig(BaseModel):
    """The entry point clients call: one OpenAI-compatible address in front of the
    vLLM server(s), splitting each alias's traffic between versions by weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8012, ge=1, le=65535)
    db: Path | None = None
    """The route table and request log; default `gateway.db` in the state folder."""

    @property
    def base_url(self) -> str:
        """The gateway's root (no /v1)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        """The OpenAI-compatible API root clients use."""
        return self.base_url + "/v1"


class Settings(BaseSettings):
    """Everything upgate needs to run a cycle."""

    model_config = SettingsConfigDict(
        env_prefix="UPGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Path(".upgate")
    policy: Path
    operator: str = "operator"
    """Who starts cycles from this configuration (the requester of their proposals)."""
    agents: AgentsConfig
    target: TargetConfig
    serving: ServingConfig = ServingConfig()
    gateway: GatewayConfig = GatewayConfig()
    bluegreen: LauncherConfig = LauncherConfig()
    """How blue/green starts its extra vLLM servers."""
    sandbox: SandboxConfig = Field(default_factory=DockerSandboxConfig)
    mode: Literal["interactive", "batch"] = "interactive"
    notify: NotifySettings = NotifySettings()
    witness: WitnessConfig | None = None
    """Where the ledger's signed heads are published, outside the state folder."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then values passed in (the file's)."""
        return (env_settings, init_settings)

    @property
    def gateway_db(self) -> Path:
        """The gateway's route table and request log."""
        return self.gateway.db or self.state_dir / "gateway.db"


_PATH_KEYS = (("state_dir",), ("policy",), ("target", "path"), ("target", "suite"),
              ("target", "hidden_tests"), ("serving", "base_model_path"), ("witness", "path"),
              ("witness", "key_dir"), ("gateway", "db"),
              ("bluegreen", "python"), ("bluegreen", "run_dir"))


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for keys in _PATH_KEYS:
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str) \
                and "://" not in node[keys[-1]]:  # a git witness may be a URL
            p = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(p if p.is_absolute() else (base / p).resolve())


def find_config(explicit: Path | None = None) -> Path:
    """The config file: the one given, else $UPGATE_CONFIG, else ./upgate.toml."""
    if explicit is not None:
        path = explicit
    elif os.environ.get("UPGATE_CONFIG"):
        path = Path(os.environ["UPGATE_CONFIG"])
    else:
        path = Path.cwd() / DEFAULT_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found. Pass --config FILE, set UPGATE_CONFIG, or create "
            f"{DEFAULT_CONFIG_NAME} in the working directory (see examples/upgate.toml)."
        )
    return path


SettingsT = TypeVar("SettingsT", bound=Settings)


@overload
def load_settings(path: Path | None = None) -> Settings: ...


@overload
def load_settings(path: Path | None, cls: type[SettingsT]) -> SettingsT: ...


def load_settings(path: Path | None = None, cls: type[Settings] = Settings) -> Settings:
    """Load and validate settings (as `cls`); every error names the key and how to fix it."""
    cfg = find_config(path)
    try:
        data = tomllib.loads(cfg.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg} is not valid TOML: {exc}") from exc
    _resolve_paths(data, cfg.parent.resolve())
    try:
        settings = cls(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, cfg)) from exc
    if not settings.state_dir.is_absolute():
        settings = settings.model_copy(update={"state_dir": settings.state_dir.resolve()})
    return settings


def _explain(exc: ValidationError, cfg: Path) -> str:
    lines = [f"invalid settings in {cfg} (or UPGATE_* environment variables):"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc) or "(top level)"
        env = "UPGATE_" + "__".join(p.upper() for p in loc)
        if err["type"] == "missing":
            hint = f"set `{loc[-1]}` under [{'.'.join(loc[:-1])}] in the file, or {env}"
            if len(loc) == 1:
                hint = f"set `{loc[0]} = ...` at the top of the file, or {env}"
        elif err["type"] == "extra_forbidden":
            hint = "remove it: it is not a setting (check the spelling)"
        else:
            hint = f"fix the value (file or {env})"
        lines.append(f"  - {dotted}: {err['msg']}; {hint}")
    return "\n".join(lines)


class TargetManifest(BaseModel):
    """`upgate-target.toml` in the target repository: how to test it and what it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    test_command: str
    model_alias: str | None = None
    base_model: str | None = None
    prompt_file: str | None = None
    config_file: str | None = None
    labels: tuple[str, ...] = ()
    recipes: tuple[str, ...] = ()
    sandbox_setup: str | None = None
    sandbox_packages: tuple[str, ...] = ()
    """Pinned packages (name==version) the target's tests need in the sandbox image."""
    code_paths: tuple[str, ...] = ()
    """`[code] paths`: where a code change may go (default: the package folders, `src/`)."""
    test_paths: tuple[str, ...] = ()
    """`[code] tests`: where the target's tests live (default: `tests/`, `test/`)."""


_MANIFEST_KEYS: dict[str, tuple[str, ...]] = {
    "target": ("name", "description", "test_command", "sandbox_setup", "sandbox_packages"),
    "model": ("alias", "base_model"),
    "prompt": ("file", "config_file", "labels"),
    "eval": ("suite",),
    "recipes": ("allowed",),
    "code": ("paths", "tests"),
}


def load_manifest(target_path: Path) -> TargetManifest:
    """Read the target's manifest; a missing or bad one says what to add."""
    path = target_path / TARGET_MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: the target needs a {TARGET_MANIFEST} naming at least "
            "[target] name and test_command (see examples/ticket-triage/upgate-target.toml)"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    unknown = [
        f"{section}.{key}" if isinstance(body, dict) else f"[{section}]"
        for section, body in raw.items()
        for key in (body if isinstance(body, dict) else [None])
        if section not in _MANIFEST_KEYS or (key is not None and key not in _MANIFEST_KEYS[section])
    ]
    if unknown:
        raise ConfigError(
            f"{path} has unknown keys: {', '.join(unknown)}. Known: "
            + "; ".join(f"[{s}] {', '.join(k)}" for s, k in _MANIFEST_KEYS.items())
        )
    flat: dict[str, Any] = {}
    target = raw.get("target", {})
    flat.update({k: target[k] for k in ("name", "test_command", "sandbox_setup",
                                        "sandbox_packages") if k in target})
    model = raw.get("model", {})
    if "alias" in model:
        flat["model_alias"] = model["alias"]
    if "base_model" in model:
        flat["base_model"] = model["base_model"]
    prompt = raw.get("prompt", {})
    for k_src, k_dst in (("file", "prompt_file"), ("config_file", "config_file"),
                         ("labels", "labels")):
        if k_src in prompt:
            flat[k_dst] = prompt[k_src]
    code = raw.get("code", {})
    for k_src, k_dst in (("paths", "code_paths"), ("tests", "test_paths")):
        if k_src in code:
            flat[k_dst] = code[k_src]
    if "allowed" in raw.get("recipes", {}):
        flat["recipes"] = raw["recipes"]["allowed"]
    try:
        return TargetManifest.model_validate(flat)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path} is invalid: {problems}") from exc
