"""Where upq and upq-cli look for upq.cfg without -c: a clone's ./upq.cfg first, else the
installed /etc/upq/upq.cfg. Standard library only: the client imports it too."""
from __future__ import annotations

import os
from typing import Callable

LOCAL_CONFIG = "./upq.cfg"              # a clone, `make run`, or a test's own folder
SYSTEM_CONFIG = "/etc/upq/upq.cfg"      # the Debian package's conffile
DEFAULT_CONFIG_HELP = f"{LOCAL_CONFIG} if it exists, else {SYSTEM_CONFIG}"


def default_config(exists: Callable[[str], bool] = os.path.isfile) -> str:
    """The config file to use when none is named: ./upq.cfg if it exists, else /etc/upq/upq.cfg."""
    return LOCAL_CONFIG if exists(LOCAL_CONFIG) else SYSTEM_CONFIG


def config_or_default(path: str | None, exists: Callable[[str], bool] = os.path.isfile) -> str:
    """-c PATH when given, else the default; an empty -c counts as not given."""
    return path if path else default_config(exists)
