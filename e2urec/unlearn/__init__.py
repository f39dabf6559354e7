"""Unlearning methods: one interface, a result with the unlearned model and its costs."""

from e2urec.unlearn.base import UnlearnResult, UnlearnTask
from e2urec.unlearn.e2urec import e2urec_unlearn
from e2urec.unlearn.e2urec_config import E2URecConfig, as_trained, fitted_like, student_on
from e2urec.unlearn.methods import METHODS, Method, RunOptions, get_method
from e2urec.unlearn.stopping import StopRule

__all__ = [
    "METHODS",
    "E2URecConfig",
    "as_trained",
    "fitted_like",
    "Method",
    "RunOptions",
    "StopRule",
    "UnlearnResult",
    "UnlearnTask",
    "e2urec_unlearn",
    "get_method",
    "student_on",
]
