"""One exception hierarchy for upgate; each message says what to do.

Expected failures (a failing test, a rejected candidate, a non-zero exit in a sandbox) are
values, not exceptions. These are for broken infrastructure and misuse.
"""


class UpgateError(Exception):
    """Root of every error upgate raises on purpose."""


class ConfigError(UpgateError, ValueError):
    """A setting is missing or wrong; the message names it and says how to fix it."""


class PolicyError(UpgateError, ValueError):
    """The policy file is malformed."""


class LedgerError(UpgateError, RuntimeError):
    """The ledger cannot be written or read."""


class ApprovalError(UpgateError, PermissionError):
    """An approval or rejection was refused (unknown cycle, wrong person, stale binding)."""


class SandboxError(UpgateError, RuntimeError):
    """The sandbox infrastructure failed (not the command inside it)."""


class SandboxUnavailableError(SandboxError):
    """The configured sandbox backend cannot run on this machine."""


class AgentOutputError(UpgateError, ValueError):
    """A model kept returning output that does not fit the schema."""


class ModelRequestsForbiddenError(UpgateError, RuntimeError):
    """A real model request was attempted where they are forbidden (the unit test tier)."""


class DeployError(UpgateError, RuntimeError):
    """A deployment or rollback step failed."""


class EvalError(UpgateError, RuntimeError):
    """An eval suite could not be loaded or run."""


class IdentityError(ApprovalError):
    """A key, identity or admin record is missing, unregistered or does not verify."""
