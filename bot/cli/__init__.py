"""The operator's commands: drill, plan, rehearse, check, health, incidents, serve."""
