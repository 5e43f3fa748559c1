"""Where the package's shared files (config/, launch/) are, installed or in a source tree."""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = 'bodycam_ros'


def share_dir() -> Path:
    """The package share directory.

    Order: the ament index (colcon installs, or a venv on ``AMENT_PREFIX_PATH``), then the
    running interpreter's prefix (``pip install .`` puts data_files under ``<venv>/share``),
    then the source tree this module sits in (tests run from ``src/``).
    """
    try:
        from ament_index_python.packages import (PackageNotFoundError,
                                                 get_package_share_directory)
        try:
            return Path(get_package_share_directory(PACKAGE))
        except (PackageNotFoundError, LookupError, ValueError, OSError):  # OSError: no AMENT_PREFIX_PATH
            pass
    except ImportError:
        pass
    src_root = Path(__file__).resolve().parents[2]
    for candidate in (src_root, Path(sys.prefix) / 'share' / PACKAGE):
        if (candidate / 'config').is_dir():
            return candidate
    raise FileNotFoundError(f'cannot find the {PACKAGE} share directory (config/, launch/)')


def config_file(name: str) -> Path:
    """A file in the package's ``config/`` directory, e.g. ``config_file('sim.yaml')``."""
    path = share_dir() / 'config' / name
    if not path.is_file():
        raise FileNotFoundError(f'no config file {path}')
    return path
