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
    far *below* 0.5 fails too when unlearning put it there (see :func:`membership_check`)."""
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
    reasons += membership_check(
        out["mia_auc_before"], out["mia_auc_after"], len(forget), len(audit), settings, out
    )
    out["forget_samples"] = float(len(forget))
    out["audit_samples"] = float(len(audit))
    out["valid_samples"] = float(len(valid))
    return GateResult(not reasons, reasons, out)


def membership_check(
    before: float, after: float, n_forget: int, n_audit: int, settings: Settings, out: dict
) -> list[str]:
    """The attack's verdict on the new model: reasons to refuse it (none: it passes), with the
    bounds it used written into ``out``.

    Above ``mia_threshold`` the forget set still looks familiar: refused. Below the mirror
    bound (``1 - threshold``) it looks *less* familiar than never-seen data, which singles its
    users out as well, but only unlearning that pushed it there is refused: users whose
    samples already looked that unfamiliar to the model before unlearning (atypical users the
    base never fitted) pass as long as the new model leaves them no further below than the
    old one did. Refusing them would fail their deletion for a trait of their data that no
    adapter can change, and keep them quarantined forever."""
    threshold = mia_threshold(n_forget, n_audit, settings.gate_mia_band, settings.gate_false_alarm)
    floor = min(1.0 - threshold, before)
    out["mia_auc_standard_error"] = auc_standard_error(after, n_forget, n_audit)
    out["mia_threshold"] = threshold
    out["mia_floor"] = floor
    out["mia_power"] = mia_test_power(
        settings.gate_memorised_mia,
        n_forget,
        n_audit,
        settings.gate_mia_band,
        settings.gate_false_alarm,
    )
    noise = (
        f"0.5 +- {settings.gate_mia_band} plus noise for {n_forget} forget and {n_audit} "
        "held-out samples"
    )
    if after > threshold:
        return [
            f"membership inference AUC {after:.3f} is above {threshold:.3f} ({noise}): the "
            "forget set still looks more familiar than never-trained data"
        ]
    if after < floor:
        if floor < 1.0 - threshold:
            return [
                f"membership inference AUC {after:.3f} fell below the untouched model's "
                f"{before:.3f}: unlearning made the forget set look even less familiar than "
                "never-trained data, which singles its users out"
            ]
        return [
            f"membership inference AUC {after:.3f} is below {floor:.3f} ({noise}): unlearning "
            "made the forget set look less familiar than never-trained data, which singles its "
            "users out"
        ]
    return []
