"""The kernel manager the runner starts notebooks with: local IPC sockets instead of TCP (no start-up warning about
an unencrypted TCP kernel, nothing listening on a port), in a private temporary folder removed at shutdown."""

from __future__ import annotations

import os
import shutil
import tempfile

from jupyter_client.manager import AsyncKernelManager
from traitlets import default


class QuietKernelManager(AsyncKernelManager):
    """An ``AsyncKernelManager`` whose kernel talks over IPC sockets under a fresh temporary folder."""

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc"

    @default("ip")
    def _ip_default(self) -> str:
        # a Unix socket path must stay short (about 100 bytes): the system's temporary folder, not the run folder
        return os.path.join(tempfile.mkdtemp(prefix="tunebook-kernel-"), "kernel")

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(os.path.dirname(self.ip), ignore_errors=True)

    cleanup_resources = _async_cleanup_resources
