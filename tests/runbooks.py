"""Runbooks for tests, in YAML as an operator writes them, with the first phase most of them share
written once: the authorization phase (``runbook``) or the gate before a work phase (``gated``)."""

from __future__ import annotations

import textwrap


def runbook(name: str, phases: str) -> str:
    """A runbook named ``name``: the authorization phase (the default approval policy), then ``phases``
    (the other items of its list of phases, in YAML)."""
    head = (f"name: {name}\nphases:\n  - id: authorization\n    title: Authorization\n    steps:\n"
            "      - {id: approval, title: Approval, kind: approval, policy: default}\n")
    return head + textwrap.indent(textwrap.dedent(phases), "  ")


def gated(name: str, steps: str) -> str:
    """A runbook named ``name``: the phase ``gate`` (one approval), then the phase ``work`` with ``steps``
    (the items of its list of steps, in YAML). Other keys of the runbook (``compensation``) may follow."""
    head = (f"name: {name}\nphases:\n  - id: gate\n    title: Gate\n    steps:\n"
            "      - {id: approval, title: Approval, kind: approval}\n"
            "  - id: work\n    title: Work\n    steps:\n")
    return head + textwrap.indent(textwrap.dedent(steps), "      ")
