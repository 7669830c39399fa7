"""The approval service's own key: it signs the decisions of the people it logged in.

The private key lives in a key folder outside the state folder; the state holds its public
key, registered by an admin-signed record. `register_as` lets an admin do that once, from
the same key folder, when starting the service.
"""

from __future__ import annotations

import logging
from pathlib import Path

from upgate import admin
from upgate.errors import IdentityError
from upgate.graphs.runner import Runner
from upgate.identity import (
    KeySigner,
    ensure_outside,
    generate_key,
    key_file,
    load_signer,
    person_key_id,
)

log = logging.getLogger(__name__)


def service_signer(runner: Runner, name: str, key_dir: Path, *,
                   register_as: str | None = None) -> KeySigner:
    """The service's signer, registered in this state (by `register_as`, an admin, if asked)."""
    deps = runner.deps
    key_id = f"service:{name}"
    ensure_outside(key_dir, deps.state_dir)
    how = (f"an admin registers it once with `upgate serve --register-as ADMIN --key-dir "
           f"{key_dir}` (the admin's key in that folder)")
    if not key_file(key_id, key_dir).exists():
        if register_as is None:
            raise IdentityError(f"no key for {key_id} in {key_dir}; {how}")
        generate_key(key_id, key_dir)
    signer = load_signer(key_id, key_dir)
    registered = admin.replay(deps.store, deps.ledger).keyring().public_keys.get(key_id)
    if registered == signer.public_key:
        return signer
    if register_as is None:
        raise IdentityError(f"{key_id}'s key is not the one registered in this state; {how}")
    acting = load_signer(person_key_id(register_as), key_dir)
    admin.add_service(deps.store, deps.ledger, acting, name, public_key=signer.public_key)
    log.info("registered %s, signed by %s", key_id, register_as)
    return signer
