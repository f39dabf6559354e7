"""The quality gate between training an adapter and publishing it."""

from __future__ import annotations

from dataclasses import dataclass

from e2urec.backbones import Backbone
from e2urec.data import Catalog, Sample
from e2urec.metrics import (
    auc,
    auc_standard_error,
    log_loss,
    mia_auc,
    mia_test_power,
    mia_threshold,
    sample_log_loss,
)
from e2urec.scoring import predict_like
from service.core.settings import Settings


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
    serving now, and (2) a loss-threshold membership-inference attack (one threshold per label)
    cannot tell the forget set from never-trained data of the same period (the audit users'
    samples).

    (2) is a one-sided test with a stated power: the attack AUC must stay below
    ``mia_threshold`` (0.5 + ``gate_mia_band`` + the ``1 - gate_false_alarm`` quantile of its
    noise), so a deletion that forgot fails with probability at most ``gate_false_alarm``, and a
    no-op on users memorised to ``gate_memorised_mia`` fails with probability ``mia_power``
    (at least ``gate_power`` once the batch holds ``settings.gate_min_forget_samples()``). An AUC
    far *below* 0.5 fails too: forget samples that look less familiar than never-seen data
    single their users out just as well."""
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
            sample_log_loss(labels_f, pf), sample_log_loss(labels_a, pa), labels_f, labels_a
        )
    reasons = []
    drop = out["valid_auc_before"] - out["valid_auc_after"]
    if drop > settings.gate_max_auc_drop:
        reasons.append(
            f"validation AUC fell {drop:.4f} (from {out['valid_auc_before']:.4f} to "
            f"{out['valid_auc_after']:.4f}), more than {settings.gate_max_auc_drop}"
        )
    mia = out["mia_auc_after"]
    n_f, n_a = len(forget), len(audit)
    threshold = mia_threshold(n_f, n_a, settings.gate_mia_band, settings.gate_false_alarm)
    floor = 1.0 - threshold  # the same test, for a forget set made to look *less* familiar
    out["mia_auc_standard_error"] = auc_standard_error(mia, n_f, n_a)
    out["mia_threshold"] = threshold
    out["mia_power"] = mia_test_power(
        settings.gate_memorised_mia, n_f, n_a, settings.gate_mia_band, settings.gate_false_alarm
    )
    if not floor <= mia <= threshold:
        reasons.append(
            f"membership inference AUC {mia:.3f} is outside [{floor:.3f}, {threshold:.3f}] "
            f"(0.5 +- {settings.gate_mia_band} plus noise for {n_f} forget and {n_a} held-out "
            "samples): the forget set still looks different from never-trained data"
        )
    out["forget_samples"] = float(len(forget))
    out["audit_samples"] = float(len(audit))
    out["valid_samples"] = float(len(valid))
    return GateResult(not reasons, reasons, out)
