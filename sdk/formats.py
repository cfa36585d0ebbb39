"""`edgevla.formats`: the packed weight formats. The definition lives with the robot-side runtime
(`edgevla.runtime.formats`), which owns the contract; this name re-exports it for dev-side users."""

from edgevla.runtime.formats import *  # noqa: F401,F403
from edgevla.runtime.formats import __all__  # noqa: F401
