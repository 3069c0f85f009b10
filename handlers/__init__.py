"""Slack listeners: each acks at once and calls one function of ``bot``."""
