"""The real-stack adapter's former single module; it now lives in planner.stack (driver, boot,
firmware, diff). Kept so that ``from planner.libvirt_stack import ...`` goes on working."""

from planner.stack import *  # noqa: F403
from planner.stack import __all__  # noqa: F401
