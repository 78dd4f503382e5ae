"""Run-time safety checks shared by every job.

* ``check_environment``: the job refuses to start when the environment re-enables pickle
  loading in torch (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), which would let a tampered
  checkpoint run code; model weights are only ever read from safetensors after their digest
  is checked (artifacts.py), and this keeps torch from being told otherwise.
* ``secret_values``: the values of secret-looking environment variables (AWS keys, tokens,
  passwords), which ``moderation.redact`` masks in every log line, printed error and stored
  error text.
"""

from __future__ import annotations

import os
import re

from moderation.errors import ModerationError

#: Environment variables that must not be set (to a true value) while a job runs.
FORBIDDEN_ENV = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY|SESSION)", re.I)


class UnsafeEnvironment(ModerationError):
    """The environment disables a safety guarantee the job relies on."""


def check_environment() -> None:
    """Raise UnsafeEnvironment when a forbidden variable is set to anything but 0/false/empty."""
    for name in FORBIDDEN_ENV:
        value = os.environ.get(name, "").strip().lower()
        if value not in ("", "0", "false", "no"):
            raise UnsafeEnvironment(
                f"environment variable {name} is set: it lets torch.load unpickle arbitrary objects "
                f"(code execution from a tampered model file). Unset it; models load only from "
                f"digest-checked safetensors"
            )


def secret_values() -> list[str]:
    """Values of the environment's secret-looking variables (long enough to be worth masking)."""
    return sorted(
        {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6},
        key=len, reverse=True,
    )
