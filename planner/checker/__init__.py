"""The independent checker (`pciplan check`): it imports nothing of the planner, so it can
judge the planner's output; its tables are its own, held against models/ by tests."""
