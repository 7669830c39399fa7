"""The agents' prompt templates, versioned by content hash.

Each prompt is a Markdown file here; its version is the SHA-256 of its text, recorded with
every decision the prompt took part in.

Untrusted values (a proposal, a diff, tool output, a model's answer) go inside data fences.
The templates write them as `<data>` ... `</data>`; every render draws a fresh random tag
(`<data-1f0c...>`), so text inside cannot close its fence by writing `</data>`, and
placeholders are filled in one pass, so a value holding `{feedback}` stays that text.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from importlib import resources

from upgate.hashing import sha256_text

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TAG = re.compile(r"<(/?)data([^>]*)>", re.IGNORECASE)


@dataclass(frozen=True)
class DataFence:
    """One random pair of data tags, drawn per model call."""

    tag: str

    @classmethod
    def new(cls) -> DataFence:
        """A fence nobody can guess before the call."""
        return cls(tag=f"data-{secrets.token_hex(8)}")

    @property
    def open(self) -> str:
        """The opening tag."""
        return f"<{self.tag}>"

    @property
    def close(self) -> str:
        """The closing tag."""
        return f"</{self.tag}>"

    def wrap(self, text: str) -> str:
        """`text` inside this fence, with any data tag in it made inert."""
        return f"{self.open}\n{inert(text)}\n{self.close}"


def inert(text: str) -> str:
    """Untrusted text with every `<data...>` or `</data...>` tag defused (`&lt;data`)."""
    return _TAG.sub(lambda m: f"&lt;{m.group(1)}data{m.group(2)}>", text)


@dataclass(frozen=True)
class PromptVersion:
    """One prompt's text and its content hash."""

    name: str
    text: str
    sha256: str

    @property
    def version_id(self) -> str:
        """`name@hash12`."""
        return f"{self.name}@{self.sha256[:12]}"

    def render(self, *, fence: DataFence | None = None, **values: str) -> str:
        """Fill `{placeholders}` in one pass; values are inserted verbatim and made inert.

        The template's `<data>` tags become the fence's random tags (a fresh fence unless
        one is given, for callers that fence more messages of the same conversation).
        """
        fence = fence or DataFence.new()
        template = self.text.replace("</data>", fence.close).replace("<data>", fence.open)

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            return inert(values[key]) if key in values else match.group(0)

        return _PLACEHOLDER.sub(fill, template)


def load_prompt(name: str) -> PromptVersion:
    """Load `prompts/<name>.md`."""
    text = resources.files(__name__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    return PromptVersion(name=name, text=text, sha256=sha256_text(text))
