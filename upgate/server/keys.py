"""The approval service's own key: it signs the decisions of the people it logged in.

The private key lives in a key folder outside the state folder; the state holds its public
key, registered by an admin-signed record (`upgate service add NAME --as ADMIN`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from upgate import admin
from upgate.errors import IdentityError
from upgate.graphs.runner import Runner
from upgate.identity import KeySigner, ensure_outside, key_file, load_signer

log = logging.getLogger(__name__)


def service_signer(runner: Runner, name: str, key_dir: Path) -> KeySigner:
    """The service's signer, if its key is the one registered in this state."""
    deps = runner.deps
    key_id = f"service:{name}"
    ensure_outside(key_dir, deps.state_dir)
    how = (f"an admin registers it once with `upgate service add {name} --as ADMIN "
           f"--key-dir {key_dir}`")
    if not key_file(key_id, key_dir).exists():
        raise IdentityError(f"no key for {key_id} in {key_dir}; {how}")
    signer = load_signer(key_id, key_dir)
    registered = admin.replay(deps.store, deps.ledger).keyring().public_keys.get(key_id)
    if registered != signer.public_key:
        raise IdentityError(f"{key_id}'s key is not the one registered in this state; {how}")
    return signer
