"""The quality gate between training an adapter and publishing it."""

from __future__ import annotations

from dataclasses import dataclass

from e2urec.backbones import Backbone
from e2urec.data import Catalog, Sample
from e2urec.metrics import auc, auc_standard_error, log_loss, mia_auc, sample_log_loss
from e2urec.scoring import predict_like
from service.settings import Settings


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]
    metrics: dict[str, float]


def quality_gate(
    current: Backbone,
    new: Backbone,
    catalog: Catalog,
    valid: list[Sample],
    forget: list[Sample],
    audit: list[Sample],
    settings: Settings,
) -> GateResult:
    """Publish only if (1) validation AUC fell at most ``gate_max_auc_drop`` from the model
    serving now, and (2) a loss-threshold membership-inference attack cannot tell the forget
    set from never-trained data of the same period (the audit users' samples): its AUC within
    ``0.5 +- gate_mia_band``, allowing two standard errors of sampling noise."""
    if not audit:
        raise ValueError(
            "no audit samples to check the forget set against: set E2UREC_AUDIT_FRACTION > 0 "
            "and retrain the base (e2urec-service bootstrap, or a consolidation)"
        )

    def prompts(part: list[Sample]):
        return [catalog.prompt(s) for s in part]

    labels_v = [s.label for s in valid]
    labels_f = [s.label for s in forget]
    labels_a = [s.label for s in audit]
    out: dict[str, float] = {}
    for name, model in (("before", current), ("after", new)):
        pv = predict_like(model, prompts(valid), batch_size=128)
        pf = predict_like(model, prompts(forget), batch_size=128)
        pa = predict_like(model, prompts(audit), batch_size=128)
        out[f"valid_auc_{name}"] = auc(labels_v, pv)
        out[f"forget_logloss_{name}"] = log_loss(labels_f, pf)
        out[f"audit_logloss_{name}"] = log_loss(labels_a, pa)
        out[f"mia_auc_{name}"] = mia_auc(
            sample_log_loss(labels_f, pf), sample_log_loss(labels_a, pa)
        )
    reasons = []
    drop = out["valid_auc_before"] - out["valid_auc_after"]
    if drop > settings.gate_max_auc_drop:
        reasons.append(
            f"validation AUC fell {drop:.4f} (from {out['valid_auc_before']:.4f} to "
            f"{out['valid_auc_after']:.4f}), more than {settings.gate_max_auc_drop}"
        )
    mia = out["mia_auc_after"]
    # A few users give a few samples, and an AUC from 20 samples moves by 0.07 by chance alone:
    # fail only when the attack's advantage exceeds the band by more than two standard errors.
    se = auc_standard_error(mia, len(forget), len(audit))
    out["mia_auc_standard_error"] = se
    if abs(mia - 0.5) - 2 * se > settings.gate_mia_band:
        reasons.append(
            f"membership inference AUC {mia:.3f} (standard error {se:.3f}) is outside "
            f"0.5 +- {settings.gate_mia_band}: the forget set still looks different from "
            "never-trained data"
        )
    out["forget_samples"] = float(len(forget))
    out["audit_samples"] = float(len(audit))
    out["valid_samples"] = float(len(valid))
    return GateResult(not reasons, reasons, out)
