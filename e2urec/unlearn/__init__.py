"""Unlearning methods: one interface, a result with the unlearned model and its costs."""

from e2urec.unlearn.base import UnlearnResult, UnlearnTask
from e2urec.unlearn.e2urec import E2URecConfig, e2urec_unlearn
from e2urec.unlearn.stopping import StopRule

__all__ = ["E2URecConfig", "StopRule", "UnlearnResult", "UnlearnTask", "e2urec_unlearn"]
