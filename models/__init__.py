"""Machine, controller and device facts as data (TOML files), installed as planner.models (setup.py)."""
