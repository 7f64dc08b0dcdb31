"""Preview for the policy form: the target, deadline and declarations a device would receive under
the settings in the form, saved or not. Uses the DDM room's own functions (release index, target
choice, deadline, declaration builders), so the preview is what the engine would compute; nothing
is stored."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..extensions import db
from ..models import utcnow


@dataclass
class Preview:
    target_version: str | None = None
    target_build: str | None = None
    deadline_local: str | None = None
    deadline_note: str | None = None      # "deadline counted from iOS 18.1 (first release this device missed)"
    target_cves: int | None = None        # SOFA: CVEs the target fixes (None: SOFA does not describe it)
    target_exploited: tuple = ()          # SOFA: actively exploited CVEs among them
    reason: str | None = None
    compliant: bool = False
    declarations: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def preview_for(device, settings, policy=None) -> Preview:
    from ..ddm import declarations as decl
    from ..ddm.models import DevicePatchTarget
    from ..ddm.plan import PatchPlan, release_index
    from ..ddm.targets import REASON_MODEL_UNKNOWN, choose_target, plan_deadline

    now = utcnow()
    stored = db.session.get(DevicePatchTarget, device.id)
    # The grace period counts from when the policy started applying: keep that moment if it already does.
    applied_at = stored.applied_at if stored and policy and stored.policy_id == policy.id and stored.applied_at \
        else now
    out = Preview()
    index = release_index()
    model = index.model_for(device.software_update_device_id, device.product_name)
    if model is None:
        out.reason = REASON_MODEL_UNKNOWN
    else:
        choice = choose_target(index.releases_for(model), device.os_version, deferral_days=settings.deferral_days,
                               stay_on_major=settings.stay_on_major, now=now)
        out.compliant, out.reason = choice.compliant, choice.reason
        out.target_version, out.target_build = choice.target_version, choice.target_build
        security = index.security_of(choice.release)
        if security is not None:
            out.target_cves, out.target_exploited = security.cve_count, security.exploited_cves
        if choice.release is not None and settings.enforce and settings.local_time:
            deadline = plan_deadline(index.releases_for(model), device.os_version, choice.release,
                                     deferral_days=settings.deferral_days, grace_days=settings.grace_days,
                                     local_time=settings.local_time, applied_at=applied_at, now=now,
                                     anchor_rule=settings.deadline_anchor,
                                     exploited_grace_days=settings.exploited_grace_days, security=index.security,
                                     stay_on_major=settings.stay_on_major)
            out.deadline_local, out.deadline_note = deadline.local, deadline.note
    plan = PatchPlan(policy_id=policy.id if policy else 0, policy_name=settings.name, binding="preview",
                     settings=settings, target_version=out.target_version, target_build=out.target_build,
                     deadline_local=out.deadline_local, deadline_utc=None, reason=out.reason,
                     compliant=out.compliant, conflicts=(), deadline_note=out.deadline_note)
    if not device.runs_ios:
        out.notes.append(f"{device.platform} device: iOS & iPadOS patch policies do not apply to it")
        return out
    for build in (decl.software_update_settings, decl.enforcement_specific):
        built = build(device, plan)
        out.notes.extend(built.notes)
        if built.declaration is not None:
            out.declarations.append(built.declaration)
    delay = decl.restrictions_delay_days(device, plan)
    if delay:
        out.notes.append(f"iOS 17: deferral of {delay} days applied with a restrictions profile")
    return out
