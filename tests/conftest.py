"""Suite-wide guards."""

from __future__ import annotations

import os
import tempfile

from gateway import fastpath
from gateway.config import ServerConfig

# No test may write into the user's data directory: the embedded store's
# default location follows XDG_DATA_HOME. Set before anything builds an app.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="gateway-tests-xdg-")

# GATEWAY_FRAMEWORK_BYPASSES=0 runs the suite with the framework bypasses off
# (gateway/fastpath.py): every app, server and gateway process a test makes reads
# it; the process-wide ones (the serializers) follow it from the start, before any
# app is made.
fastpath.select(fastpath.enabled(ServerConfig()))
