"""The rendered plan, approval bound to it, and rehearsals against staging."""
