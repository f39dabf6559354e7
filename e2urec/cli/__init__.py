"""The ``e2urec`` command line: prepare data, train the LLMRec, score it, unlearn users from it,
or run the demo. Each command lives in its own module; importing this package registers them."""

from e2urec.cli import data, demo, train, unlearn  # noqa: F401  (registers the commands)
from e2urec.cli.app import app, friendly_errors

__all__ = ["app", "friendly_errors"]
