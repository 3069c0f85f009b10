"""The runbook, the incident's lifecycle, the engine and what it decides with."""
