"""What the console scripts share: where conf/ is, clean errors for bad input, loggers."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, MissingMandatoryValue)


def _user_error(err: BaseException) -> BaseException | None:
    """The user-facing error inside `err` (Hydra wraps errors raised while instantiating)."""
    while err is not None:
        if isinstance(err, USER_ERRORS) and not isinstance(err, InstantiationException):
            return err
        err = err.__cause__ or err.__context__
    return None


def user_errors(task):
    """Bad input exits with status 2 and a one-paragraph message, no traceback
    (HYDRA_FULL_ERROR=1 shows it)."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
            user = _user_error(err)
            if user is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {user}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
