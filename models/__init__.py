"""Machine, controller and device facts as data (TOML files shipped with the package)."""
