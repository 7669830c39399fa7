"""The agents' prompt templates, versioned by content hash.

Each prompt is a Markdown file here; its version is the SHA-256 of its text, recorded with
every decision the prompt took part in.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from upgate.hashing import sha256_text


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

    def render(self, **values: str) -> str:
        """Fill `{placeholders}`; values are inserted verbatim, never re-interpreted."""
        out = self.text
        for key, value in values.items():
            out = out.replace("{" + key + "}", value)
        return out


def load_prompt(name: str) -> PromptVersion:
    """Load `prompts/<name>.md`."""
    text = resources.files(__name__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    return PromptVersion(name=name, text=text, sha256=sha256_text(text))
