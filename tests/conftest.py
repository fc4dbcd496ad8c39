"""Suite-wide guards."""

from __future__ import annotations

import os
import tempfile

# No test may write into the user's data directory: the embedded store's
# default location follows XDG_DATA_HOME. Set before anything builds an app.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="gateway-tests-xdg-")
