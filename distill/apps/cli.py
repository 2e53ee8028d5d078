"""What the console scripts share: where conf/ is, clean errors for bad input, loggers."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, InstantiationException, OverrideParseException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue



def _conf_dir() -> str:
    """Where the configs are: shipped inside the package (`pip install .` maps conf/ to distill/conf),
    or the checkout's top-level conf/ (editable install)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"fewstep's configs (train.yaml) are neither in {here / 'conf'} nor in {here.parent / 'conf'}: reinstall with `pip install .`")


CONF_DIR = _conf_dir()
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, MissingMandatoryValue, MisconfigurationException)


def set_threads(threads: int | None) -> None:
    """torch's CPU threads (null: torch's default)."""
    if threads is None:
        return
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}; or threads=null for torch's default")
    torch.set_num_threads(threads)


def check_new_dir(path: str | Path, what: str) -> Path:
    """A directory the run will create: it must not exist yet, and no part of its path may be a file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{what} {path} already exists; choose another {what} or delete it first")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise FileExistsError(f"{what} {path} lies inside {blocking}, which is a file; choose a {what} in a directory")
    return path


def _user_error(err: BaseException) -> BaseException | None:
    """The user-facing error inside `err` (Hydra wraps errors raised while instantiating)."""
    while err is not None:
        if isinstance(err, USER_ERRORS) and not isinstance(err, InstantiationException):
            return err
        err = err.__cause__ or err.__context__
    return None


def _remove_empty_run_dir() -> None:
    """Drop the run directory Hydra made if the failed run wrote nothing but Hydra's own files."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def user_errors(task):
    """Bad input exits with status 2 and a one-paragraph message, no traceback
    (HYDRA_FULL_ERROR=1 shows it), and leaves no run directory behind."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
            user = _user_error(err)
            if user is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {user}", file=sys.stderr)
            _remove_empty_run_dir()
            raise SystemExit(2) from None

    return wrapper


def check_override_keys(config_name: str, overrides: list[str]) -> None:
    """An override of a key the config does not have (objective.lr=...) exits 2 naming the valid
    keys at that place; Hydra's own message only says the key is not in the struct."""
    plain = [o for o in overrides if "=" in o and not o.startswith(("-", "+", "~"))]
    if len(plain) != len(overrides) or any("," in o.split("=", 1)[1] and "[" not in o for o in plain):
        return  # flags, additions, deletions or sweeps: Hydra reports those itself
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            compose(config_name, overrides=plain)
            return
        except OverrideParseException:
            return  # Hydra itself reports the grammar error, with its link to the override syntax
        except ConfigCompositionException as err:
            cause = err.__cause__
            if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not getattr(cause, "full_key", None):
                return
            key = cause.full_key
        try:
            cfg = compose(config_name, overrides=[o for o in plain if o.split("=", 1)[0] != key])
        except Exception:  # noqa: BLE001 - fall back to Hydra's message
            return
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not OmegaConf.is_dict(node):
        return
    valid = ", ".join(str(k) for k in node.keys() if not str(k).startswith("_"))
    print(f"error: {key} is not an option{f' of {parent}' if parent else ''}; the options are: {valid}. "
          f"(To add a key the config does not have, write +{key}=VALUE.)", file=sys.stderr)
    raise SystemExit(2)
