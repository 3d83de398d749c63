"""Runtime policy: hardware detection and the planner."""
