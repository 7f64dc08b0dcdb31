"""Preview for the policy form: the target, deadline and declarations a device would receive under
the settings in the form, saved or not. The plan is the engine's own (``plan.hypothetical_plan``, the
same computation as a recompute) and the declarations come from the DDM room's builders, so the
preview is what the engine would compute; nothing is stored."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ddm import declarations as decl
from ..ddm.plan import hypothetical_plan


@dataclass
class Preview:
    target_version: str | None = None
    target_build: str | None = None
    deadline_local: str | None = None
    reason: str | None = None
    compliant: bool = False
    declarations: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def preview_for(device, settings, policy=None) -> Preview:
    plan = hypothetical_plan(device, settings, policy_id=policy.id if policy else None)
    out = Preview(target_version=plan.target_version, target_build=plan.target_build,
                  deadline_local=plan.deadline_local, reason=plan.reason, compliant=plan.compliant)
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
