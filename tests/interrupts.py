"""Ctrl-C as it arrives during a lazy import of a C extension: as another error."""

from __future__ import annotations

import signal

from harness.signals import interrupt


def interrupted_inside_a_c_extension_import(*args, **kwargs):
    """Raise what Ctrl-C does to a lazy import of a C extension (mujoco's, torch's): the handler's
    KeyboardInterrupt, raised while the module initialises, leaves the import as the ImportError
    it caused."""

    try:
        interrupt(signal.SIGINT, None)
    except KeyboardInterrupt as error:
        raise ImportError("initialization failed") from error
