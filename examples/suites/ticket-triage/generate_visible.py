"""Write visible.jsonl: templated support tickets, balanced over the four labels.

Deterministic (no randomness: each case picks its template and slot values by index), so the
file is the same on every run and every Python version:

    python3 examples/suites/ticket-triage/generate_visible.py

The hidden split (hidden.jsonl) is written by hand in other phrasing and is never generated.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

PER_LABEL = 20
SHORT_MAX_WORDS = 12

SLOTS: dict[str, tuple[str, ...]] = {
    "plan": ("Basic", "Team", "Business", "Premium", "Starter"),
    "month": ("March", "July", "October", "January", "May"),
    "amount": ("$29.00", "$120.00", "$9.99", "$45.50", "$300.00"),
    "field": ("VAT number", "billing address", "company name"),
    "seats": ("12", "25", "8", "40"),
    "used": ("5", "10", "3", "18"),
    "action": (
        "open a shared document",
        "upload an attachment",
        "switch to the calendar view",
        "print an invoice",
        "sort the contact list",
    ),
    "code": ("500", "E-1042", "403", "timeout 504"),
    "page": ("settings", "reports", "inbox", "projects", "billing history"),
    "browser": ("Firefox", "Chrome", "Edge"),
    "format": ("PDF", "Excel", "CSV", "JSON"),
    "event": ("new comment", "task assignment", "mention", "status change"),
    "thing": ("projects", "contacts", "tags", "saved filters"),
    "name": ("Maria Lopez", "Tom Becker", "Aiko Tanaka", "Sam Okafor"),
    "email": ("j.smith@example.com", "office@example.org", "lena.k@example.net"),
    "tool": ("Slack", "Jira", "Google Drive", "Salesforce", "Zapier"),
    "period": ("Monday morning", "week", "month", "quarter"),
    "language": ("German", "Japanese", "Polish", "Korean"),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my {plan} plan this month.",
        "Please send me an invoice for my {plan} subscription for {month}.",
        "My credit card was billed {amount} but my {plan} plan costs less.",
        "How do I get a refund for the {plan} plan I cancelled in {month}?",
        "The payment for my {plan} subscription failed, can you retry the charge?",
        "Can I switch my {plan} plan from monthly to annual billing?",
        "Why does my {month} invoice include a charge of {amount}?",
        "I need to update the {field} shown on my invoices.",
        "Our team was billed for {seats} seats but we only use {used}.",
        "Hello, I noticed an unexpected charge of {amount} on my card after my free trial "
        "of the {plan} plan ended. I did not agree to be charged and would like to know what "
        "this payment is for and get it refunded.",
    ),
    "bug": (
        "The app crashes when I {action}.",
        "I get error {code} when I {action}.",
        "The {page} page does not load in {browser}.",
        "Export to {format} produces an empty file.",
        "After the latest update the {page} page shows a blank screen.",
        "Notifications are sent twice for every {event}.",
        "Search returns no results even for {thing} that exist.",
        "Clicking save on the {page} page does nothing.",
        "Since this morning the {page} page is very slow and times out.",
        "When I try to {action} in {browser}, the page freezes for a few seconds and then "
        "shows error {code}. I cleared my cache and tried another computer but it keeps "
        "happening. Please fix this.",
    ),
    "account": (
        "I forgot my password for {email} and the reset email never arrives.",
        "How do I change the email address on my account to {email}?",
        "My account {email} is locked after too many login attempts.",
        "Please delete my account and all my data, my username is {name}.",
        "{name} cannot log in with two-factor authentication after changing phones.",
        "How can I add {name} as an admin to our workspace?",
        "I want to change the display name on my profile to {name}.",
        "Please merge my two accounts into one, the second one uses {email}.",
        "How do I remove {name} from our workspace? They left the company.",
        "Hello, I have been trying to sign in to my account since yesterday but it says my "
        "email {email} is not registered, even though I have used it for two years. Can you "
        "check what happened to my login?",
    ),
    "feature": (
        "Please add a dark mode to the {page} page.",
        "It would be great if we could export reports to {format}.",
        "Could you add an integration with {tool}?",
        "I would like reports to be sent automatically every {period}.",
        "Can you add keyboard shortcuts to the {page} page?",
        "Please support {language} in the interface.",
        "We need an API endpoint to list all {thing}.",
        "It would help to have bulk editing on the {page} page.",
        "Suggestion: let users pin favourite {thing} to the top.",
        "Hello, our team uses {tool} every day and it would save us a lot of time if your "
        "product could sync {thing} with it automatically. Is this something you could add "
        "in a future release?",
    ),
}


def render(template: str, case_index: int) -> str:
    """Fill a template's slots, picking each value by the case's index."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    values = {
        name: SLOTS[name][(case_index + position) % len(SLOTS[name])]
        for position, name in enumerate(names)
    }
    return template.format(**values)


def length_slice(text: str) -> str:
    """Name the length slice a ticket belongs to."""
    return "short" if len(text.split()) <= SHORT_MAX_WORDS else "long"


def generate() -> list[dict[str, object]]:
    """Build the visible cases, labels interleaved, with unique ids and inputs."""
    cases: list[dict[str, object]] = []
    seen: set[str] = set()
    for k in range(PER_LABEL):
        for label, templates in TEMPLATES.items():
            template = templates[k % len(templates)]
            # the second round over the templates shifts every slot value
            text = render(template, k + k // len(templates))
            if text in seen:
                raise SystemExit(f"duplicate ticket {text!r}: add slot values or templates")
            seen.add(text)
            cases.append(
                {
                    "id": f"tt-v-{len(cases) + 1:03d}",
                    "input": text,
                    "expected": label,
                    "slices": [label, length_slice(text)],
                }
            )
    return cases


def main() -> int:
    """Write visible.jsonl beside this script."""
    out = Path(__file__).resolve().parent / "visible.jsonl"
    lines = [json.dumps(case, ensure_ascii=False) for case in generate()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} cases to {out.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
