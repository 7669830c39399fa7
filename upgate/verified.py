"""Approvals verified where they are used, from the ledger alone.

The approve node records the whole signed `Decision` in its ledger entry. Everything that
acts on an approval (the deploy node, rollback, reconcile, `upgate verify`, the LoRA
deployer's "version before") asks this module, never the checkpoint, an unsigned ledger
field or the state tables. A decision counts only when, checked against the keyring and
policy replayed from the admin-signed identity records as they stood when the decision
was recorded:

- its signature verifies (a person's own key, or the approval service's key for a chat or
  Slack decision), it approves, and it names exactly this cycle and candidate hash;
- it was made under the policy then adopted, by a holder of the approver role;
- the approver is not the cycle's requester, taken from the cycle's *first* ledger entry
  (and the caller's own state), so an appended fake `approval_requested` changes nothing;
- with `current=True` (the deploy node), the approver still holds the approver role now:
  an approver removed before the deploy no longer counts; for history (rollback targets,
  verify) a decision valid when made stays valid.

Enough distinct approvers are needed (the policy's `approvals_required`). Without
decisions, a change is backed only where the adopted policy lets that kind through without
approval, and never a served model.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from upgate.admin import replay_timeline
from upgate.approvals import check_signer
from upgate.errors import ApprovalError, IdentityError
from upgate.hashing import sha256_json
from upgate.identity import Keyring, person_key_id
from upgate.ledger import Entry, Ledger
from upgate.policy import ChangeKind, Policy
from upgate.records import Candidate, Decision, Deployment
from upgate.store import Store

log = logging.getLogger(__name__)

DECISION_EVENTS = ("approve", "approval_recorded")


@dataclass(frozen=True)
class Backing:
    """Whether a change is backed by a verified approval, by whom, and if not, why."""

    ok: bool
    approvers: tuple[str, ...] = ()
    why: str = ""


class Verifier:
    """The identity timeline replayed once; answers for any cycle of the same ledger."""

    def __init__(self, ledger: Ledger, store: Store) -> None:
        self.ledger = ledger
        try:
            self.timeline = replay_timeline(store, ledger)
        except IdentityError as exc:  # a broken identity log backs nothing
            log.error("no approval can be verified: %s", exc)
            self.timeline = []
        self._seqs = [t[0] for t in self.timeline]

    def at(self, seq: int) -> tuple[Keyring, Policy | None]:
        """The keyring and adopted policy in force just before ledger entry `seq`."""
        i = bisect.bisect_left(self._seqs, seq) - 1
        if i < 0:
            return Keyring(), None
        return self.timeline[i][1], self.timeline[i][2]

    def now(self) -> tuple[Keyring, Policy | None]:
        """The keyring and adopted policy in force now."""
        return self.at(1 << 62)

    def requesters(self, entries: list[Entry], extra: tuple[str, ...]) -> set[str]:
        """Who asked for the cycle: its first entry's requester, plus what the caller knows."""
        out = {r for r in extra if r}
        if entries and entries[0].node == "start":
            out.add(str(entries[0].payload.get("requester", "")))
        return out - {""}

    def approvals(self, cycle_id: str, candidate_hash: str, *,
                  requester: tuple[str, ...] = (), current: bool = False,
                  ) -> list[Decision]:
        """The distinct verified approvals of this cycle's candidate."""
        entries = self.ledger.entries(cycle_id)
        requesters = self.requesters(entries, requester)
        now_keyring, _ = self.now()
        found: dict[str, Decision] = {}
        for e in entries:
            if e.node != "approve" or e.event not in DECISION_EVENTS:
                continue
            decision = decision_in(e)
            if decision is None or decision.approver in found:
                continue
            keyring, policy = self.at(e.seq)
            if policy is None or not _counts(decision, keyring, policy, cycle_id,
                                             candidate_hash, requesters):
                continue
            if current and not now_keyring.has_role(decision.approver, "approver"):
                continue
            found[decision.approver] = decision
        return list(found.values())

    def backing(self, cycle_id: str, candidate_hash: str, kind: ChangeKind, *,
                at_seq: int | None = None, requester: tuple[str, ...] = (),
                current: bool = False) -> Backing:
        """Whether a change of `kind` is backed: enough verified approvals, or a kind the
        adopted policy (at `at_seq`, else now) lets through without one (never a model)."""
        decisions = self.approvals(cycle_id, candidate_hash, requester=requester,
                                   current=current)
        _, policy = self.now() if at_seq is None else self.at(at_seq)
        if policy is None:
            return Backing(False, why="no adopted policy (the identity records do not verify)")
        needed = max(policy.approvals_required(kind), 1)
        names = tuple(d.approver for d in decisions)
        if decisions and len(decisions) >= needed:
            return Backing(True, names)
        if kind != "model" and not policy.requires_approval(kind):
            return Backing(True, ("policy:auto",))
        return Backing(False, names, why=(
            f"the ledger holds {len(decisions)} verified approval(s) of candidate "
            f"{candidate_hash[:12]} in cycle {cycle_id}, {needed} needed (a signed decision "
            "by an approver who is not the requester, recorded by the approve node)"))


def decision_in(entry: Entry) -> Decision | None:
    """The signed decision an approve entry carries, or None."""
    raw = entry.payload.get("decision")
    if not isinstance(raw, dict):
        return None
    try:
        return Decision.model_validate(raw)
    except ValidationError:
        return None


def _counts(decision: Decision, keyring: Keyring, policy: Policy, cycle_id: str,
            candidate_hash: str, requesters: set[str]) -> bool:
    """Whether one recorded decision is a valid approval of this cycle's candidate."""
    if (decision.action != "approve" or decision.cycle_id != cycle_id
            or decision.candidate_hash != candidate_hash
            or decision.policy_version != policy.version_id):
        return False
    try:
        check_signer(decision, keyring)
    except ApprovalError:
        return False
    who = decision.approver
    key = keyring.public_keys.get(person_key_id(who))
    if who in requesters or any(keyring.public_keys.get(person_key_id(r)) == key
                                for r in requesters):
        return False
    return keyring.has_role(who, "approver")


def verified_approvals(ledger: Ledger, store: Store, cycle_id: str, candidate_hash: str,
                       kind: ChangeKind, *, requester: tuple[str, ...] = (),
                       current: bool = False) -> list[Decision]:
    """The verified approvals of exactly this cycle and candidate, when there are at least
    as many distinct ones as the policy requires for `kind`; else an empty list."""
    verifier = Verifier(ledger, store)
    backing = verifier.backing(cycle_id, candidate_hash, kind, requester=requester,
                               current=current)
    decisions = verifier.approvals(cycle_id, candidate_hash, requester=requester,
                                   current=current)
    return decisions if backing.ok and backing.approvers != ("policy:auto",) else []


def candidate_binding(candidate: Candidate) -> dict[str, Any] | None:
    """For a served model, what its content hash covers, recorded with the deployment so
    the deployed adapter can be tied to the hash the approvals sign (None otherwise)."""
    if candidate.kind != "model":
        return None
    return {"kind": candidate.kind, "diff": candidate.diff,
            "artifacts": [[a.name, a.kind, a.sha256] for a in candidate.artifacts]}


def _bound_hash(payload: dict[str, Any], d: dict[str, Any]) -> str | None:
    """The candidate hash a deploy entry's adapter is bound to, or None if it is not."""
    binding = payload.get("binding")
    if not isinstance(binding, dict) or set(binding) != {"kind", "diff", "artifacts"}:
        return None
    if [d.get("version_name"), "adapter", d.get("adapter_sha256")] not in binding["artifacts"]:
        return None
    return sha256_json(binding)


def approved_versions(verifier: Verifier, alias: str) -> tuple[dict[str, str], str | None]:
    """Versions of `alias` deployed under a verified approval (name -> sha256), plus the
    `@initial` version the first such deployment recorded, and the one the ledger's last
    deploy or rollback left active. Unbacked entries are ignored."""
    versions: dict[str, str] = {}
    deployments: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    active: str | None = None
    initial = f"{alias}@initial"
    for e in verifier.ledger.entries():
        if e.node == "deploy" and e.event in ("deployed", "staged"):
            d = e.payload.get("deployment") or {}
            if d.get("target") != "vllm" or d.get("alias") != alias or e.cycle_id in seen:
                continue
            seen.add(e.cycle_id)  # the first deployment of a cycle, never a later one
            digest = _bound_hash(e.payload, d)
            if digest is None or not verifier.backing(e.cycle_id, digest, "model",
                                                      at_seq=e.seq).ok:
                continue
            prev = d.get("previous") or {}
            name, sha = str(prev.get("version_name") or ""), str(prev.get("sha256") or "")
            if name == initial and initial not in versions and sha:
                versions[initial] = sha
            if not name or versions.get(name) != sha:
                d = {**d, "previous": None}
            deployments[e.cycle_id] = d
            versions[str(d["version_name"])] = str(d["adapter_sha256"])
            if e.event == "deployed":  # a staged version is active once its rollout promotes
                active = str(d["version_name"])
        elif e.node == "rollout" and e.event == "promoted" and e.cycle_id in deployments:
            active = str(deployments[e.cycle_id]["version_name"])
        elif e.node == "rollback" and e.event == "rolled_back":
            to = e.payload.get("to_version")
            if e.payload.get("alias") == alias and to in versions:
                active = str(to)  # `upgate rollback` names what it restored
            elif e.payload.get("restored") and e.cycle_id in deployments:
                prev = deployments[e.cycle_id].get("previous") or {}
                if prev.get("version_name") in versions:
                    active = str(prev["version_name"])
    return versions, active


def unapproved_previous(ledger: Ledger, store: Store, deployment: Deployment) -> str:
    """Why the version before a served-model deployment may not be restored ("" if it may:
    a version the ledger shows deployed under a verified approval, or `@initial`)."""
    prev = deployment.previous or {}
    if deployment.target != "vllm" or not prev.get("version_name") or not deployment.alias:
        return ""
    versions, _ = approved_versions(Verifier(ledger, store), deployment.alias)
    if versions.get(str(prev["version_name"])) != prev.get("sha256"):
        return (f"{prev['version_name']} was never deployed for {deployment.alias} under a "
                "verified approval; nothing was changed. Choose an approved version with "
                f"`upgate rollback --alias {deployment.alias} --to VERSION`")
    return ""


def _kind_of(ledger: Ledger, cycle_id: str, target: str) -> ChangeKind:
    """The kind of a cycle's change: a served model for vLLM, else its first proposal's."""
    if target == "vllm":
        return "model"
    for e in ledger.entries(cycle_id):
        if e.node == "propose" and e.event == "proposal":
            kind = str((e.payload.get("proposal") or {}).get("kind", "code"))
            return kind if kind in ("code", "prompt", "config") else "code"  # type: ignore[return-value]
    return "code"


def unbacked(ledger: Ledger, store: Store) -> list[str]:
    """Every deploy not backed by a verified approval and every rollback to a version not
    approved, as problems `upgate verify` reports."""
    verifier = Verifier(ledger, store)
    problems: list[str] = []
    aliases: dict[str, tuple[dict[str, str], str | None]] = {}
    for e in ledger.entries():
        if e.node == "deploy" and e.event == "deployed":
            d = e.payload.get("deployment") or {}
            target = str(d.get("target", "git"))
            digest = (_bound_hash(e.payload, d) if target == "vllm"
                      else (e.payload.get("lineage") or {}).get("candidate_hash"))
            backing = (verifier.backing(e.cycle_id, str(digest), _kind_of(
                ledger, e.cycle_id, target), at_seq=e.seq) if digest
                else Backing(False, why="it names no candidate its adapter is bound to"))
            if not backing.ok:
                problems.append(f"entry {e.seq}: cycle {e.cycle_id} deployed "
                                f"{d.get('version_name') or d.get('commit') or '?'} without a "
                                f"verified approval: {backing.why}")
        elif e.node == "rollback" and e.event == "rolled_back" and e.payload.get("alias"):
            alias, to = str(e.payload["alias"]), e.payload.get("to_version")
            if alias not in aliases:
                aliases[alias] = approved_versions(verifier, alias)
            if to not in aliases[alias][0]:
                problems.append(f"entry {e.seq}: {alias} was rolled back to {to}, a version "
                                "never deployed under a verified approval")
    return problems
