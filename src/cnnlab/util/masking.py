"""Secrets a command line may hold, kept out of every file and log line a run writes.

A database URL's password (`search.storage=postgresql://user:secret@host/db`, or `?password=secret`) is the
secret a cnnlab command line can carry. Whatever records the command line or the config (a run's marker and
environment.json, .hydra/*.yaml, config_resolved.yaml, TensorBoard's hparams, study.yaml, log files) passes it
through `masked` first, so the password is written as ***.
"""

from __future__ import annotations

import logging
import re
import sys

# scheme://user:password@host -> scheme://user:***@host; ?password=... / &password=... -> ***
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"]*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&\s'\"]*")


def mask(text: str) -> str:
    """The text with every URL's password as ***."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def masked(value):
    """Any record (str, dict, list, tuple, an OmegaConf container) with the passwords in its strings masked;
    other values as they are. An OmegaConf container comes back as plain dicts and lists, unresolved."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {masked(k): masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(v) for v in value)
    return value


def masked_argv(argv: list[str] | None = None) -> list[str]:
    """This process's command line (sys.argv) as it may be recorded."""
    return [mask(str(a)) for a in (sys.argv if argv is None else argv)]


class MaskingFilter(logging.Filter):
    """A handler filter that masks passwords in the formatted message (and the traceback, if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = mask(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


def mask_logs(logger: logging.Logger | None = None) -> None:
    """Mask passwords in every line the handlers of `logger` (the root logger) write from now on."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
