"""Slack: the one Bolt wiring module, the client, forms, the thread view and the flows."""
