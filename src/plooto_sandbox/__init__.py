"""plooto_sandbox: an emulator of the Plooto web portal (HTML login, MFA, internal JSON API).

Public surface: `create_app(config) -> FastAPI` and `SandboxConfig`. The contract of the emulated
portal is in this package's README.md.
"""

from plooto_sandbox.app import create_app
from plooto_sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_app"]
