"""Everything on a clock: the scheduler, timed steps, stability checks, reminders, escalations."""
