"""Importing the tuning package without Optuna names the extra that installs it, in one line."""

from retain.extras import require_extra

require_extra("tune", "optuna")
