"""The approval policy: who must approve before a rollback runs.

The plan's rule, the default here: one primary (tech_lead or cto) AND one secondary
(product_owner or vp_engineering); or, on the emergency path, one incident_commander
alone. One person counts once; the requester does not approve their own rollback,
except on a path whose ``requester_may_approve`` is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import permutations

from pydantic import BaseModel, ConfigDict, Field


class ApprovalPath(BaseModel):
    """One way to satisfy the policy: each group needs one distinct approver."""

    model_config = ConfigDict(extra="forbid")

    name: str
    groups: list[list[str]] = Field(min_length=1)
    requester_may_approve: bool = False


class ApprovalPolicy(BaseModel):
    """Any one path satisfied means approved."""

    model_config = ConfigDict(extra="forbid")

    paths: list[ApprovalPath] = Field(min_length=1)

    @property
    def roles(self) -> set[str]:
        """Every role that can approve on some path."""
        return {role for p in self.paths for g in p.groups for role in g}


DEFAULT_POLICY = ApprovalPolicy(
    paths=[
        ApprovalPath(name="standard", groups=[["tech_lead", "cto"], ["product_owner", "vp_engineering"]]),
        ApprovalPath(name="emergency", groups=[["incident_commander"]]),
    ]
)


@dataclass(frozen=True)
class Vote:
    """One approval click as the policy sees it."""

    user_id: str
    roles: frozenset[str]


@dataclass(frozen=True)
class PolicyState:
    """Whether the policy is met, by which path, and who is still needed."""

    met: bool
    path: str | None
    missing: dict[str, list[list[str]]]


def _fills(path: ApprovalPath, voters: list[Vote]) -> list[list[str]]:
    """The groups of ``path`` left unfilled by the best assignment of distinct voters."""
    best = list(path.groups)
    n = len(path.groups)
    for perm in permutations(voters, min(n, len(voters))):
        left = [g for i, g in enumerate(path.groups) if i >= len(perm) or not (perm[i].roles & set(g))]
        if len(left) < len(best):
            best = left
            if not best:
                break
    return best


def evaluate(policy: ApprovalPolicy, votes: Iterable[Vote], *, requester: str | None) -> PolicyState:
    """Evaluate approvals against the policy."""
    by_user: dict[str, Vote] = {}
    for v in votes:
        by_user.setdefault(v.user_id, v)  # one person counts once
    missing: dict[str, list[list[str]]] = {}
    for path in policy.paths:
        voters = [v for v in by_user.values() if path.requester_may_approve or v.user_id != requester]
        left = _fills(path, voters)
        if not left:
            return PolicyState(True, path.name, {})
        missing[path.name] = left
    return PolicyState(False, None, missing)


def counts(policy: ApprovalPolicy, vote: Vote, *, requester: str | None) -> tuple[bool, str]:
    """Whether a click can count on some path, and if not, why."""
    if not (vote.roles & policy.roles):
        return False, "you hold none of the approving roles (" + ", ".join(sorted(policy.roles)) + ")"
    for path in policy.paths:
        path_roles = {r for g in path.groups for r in g}
        if vote.roles & path_roles and (path.requester_may_approve or vote.user_id != requester):
            return True, ""
    return False, "you requested this rollback and may not approve it yourself"


def describe_missing(state: PolicyState) -> str:
    """A human line: 'one of tech_lead/cto and one of product_owner/vp_engineering, or ...'."""
    parts = []
    for path, groups in state.missing.items():
        need = " and ".join("one of " + "/".join(g) for g in groups)
        parts.append(f"{need} ({path})")
    return " — or — ".join(parts)
