"""What an incident leaves: audit chain, governance record, evidence, metrics, report."""
