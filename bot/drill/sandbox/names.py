"""What the sandbox production is called: its app, versions, files and users, and the
people, projects and steps its data is made of."""

from __future__ import annotations

from typing import Literal

APP_NAME = "orbis-forge-admin"
DEPLOYMENT_VERSION = "phase-3.0.0"
PREVIOUS_VERSION = "phase-2.4.1"
OLDER_VERSION = "phase-2.3.0"
ENV_FILE = ".env.production"
DATABASES_DIR = "databases"
DB_RELATIVE = f"{DATABASES_DIR}/production.db"
BACKUP_PATTERN = "production_backup_*.db"
EXPORT_USER = "emergency_admin"
DEPLOY_USER = "deploy-bot"
MAINTENANCE_MESSAGE = "System maintenance in progress. Please try again in 30 minutes."
PRE_DEPLOYMENT_EXPORT = "pre_deployment_export.json"
#: Tables the bad deployment changes through the app (it also changes user_permissions).
DEPLOYMENT_TABLES = ("projects", "phases", "step_progress")

ProcessManager = Literal["auto", "pm2", "procman"]


class SandboxError(RuntimeError):
    """The sandbox could not be built, started or stopped."""


#: What the data is made of: projects, their phases and steps, the people who work on them.
PROJECT_NAMES = (
    "OrbisForge Core",
    "BackEnd Visibility",
    "Runtime Status Dashboard",
    "Data Integrity Tools",
    "Governance Ledger",
    "MemoryPlugin Anchors",
    "DriveMemory Archive",
    "Admin Console",
    "Audit Trail",
    "Partner Onboarding",
    "Billing Reconciliation",
    "Field Operations",
)
PHASE_NAMES = ("Discovery", "Design", "Build", "UAT", "Release", "Hypercare")
STEP_NAMES = (
    "define-acceptance-criteria",
    "schema-review",
    "api-contract-sign-off",
    "implement-endpoints",
    "integration-tests",
    "security-review",
    "load-test",
    "migration-dry-run",
    "uat-sign-off",
    "release-notes",
    "runbook-update",
    "stakeholder-demo",
)
PEOPLE = (
    "alice.nguyen",
    "ben.okafor",
    "carla.reyes",
    "dev.patel",
    "elena.novak",
    "farid.haddad",
    "grace.kim",
    "hugo.martin",
    "ines.costa",
    "jamal.wright",
    "kaori.sato",
    "liam.byrne",
)
#: (role, access_level) of the ordinary users, cycled: a mix the plan's restriction touches.
ROLE_MIX = (
    ("admin", "admin"),
    ("project_manager", "read_write"),
    ("engineer", "read_write"),
    ("engineer", "read_write"),
    ("analyst", "read_only"),
    ("viewer", "read_only"),
    ("analyst", "read_write"),
    ("admin", "admin"),
)
