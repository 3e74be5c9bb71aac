"""Built-in transports: `exec` (allow-listed local programs) and `http` (allow-listed JSON APIs)."""

from mfm_dist.io.transports.exec import ExecTransport
from mfm_dist.io.transports.http import HttpTransport

__all__ = ["ExecTransport", "HttpTransport"]
