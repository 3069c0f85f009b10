"""Step executors, one per step kind: ``base`` holds the table and what an executor sees of
the engine, each other module a family of kinds; ``table`` gathers them all."""
