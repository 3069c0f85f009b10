"""The state store every replica shares: incidents, steps, questions, leases, control requests."""
