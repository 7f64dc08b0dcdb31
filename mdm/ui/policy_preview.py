"""Preview for the policy form: the target, deadline and declarations a device would receive under
the settings in the form, saved or not. The plan is the engine's own (``plan.hypothetical_plan``, the
same computation as a recompute) and the declarations come from the DDM room's builders, so the
preview is what the engine would compute; nothing is stored."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ddm import declarations as decl
from ..ddm.plan import hypothetical_plan, release_index
from ..ddm.targets import version_key


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
    plan = hypothetical_plan(device, settings, policy_id=policy.id if policy else None)
    out = Preview(target_version=plan.target_version, target_build=plan.target_build,
                  deadline_local=plan.deadline_local, deadline_note=plan.deadline_note, reason=plan.reason,
                  compliant=plan.compliant)
    security = release_index().security.get(version_key(plan.target_version)) if plan.target_version else None
    if security is not None:
        out.target_cves, out.target_exploited = security.cve_count, security.exploited_cves
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
