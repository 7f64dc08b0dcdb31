"""Scheduler job of the Software Update Enforcement policies (imported with their models).

Whether a device may get a policy's declaration depends on Apple's catalog: a release that expires or
leaves gdmf must leave the devices too (Apple: "remove any deployed configurations that use OS versions
or builds that are no longer available"), and a release newly offered to a model lets its devices in.
A catalog refresh recomputes patch plans only, so this job rebuilds the declaration sets of every device
an enforcement policy reaches, hourly; ``refresh_devices`` changes (and syncs) only sets that differ.
"""
from __future__ import annotations

from ..scheduler import register_job


def refresh_enforcement_sets(app) -> set[int]:
    from .enforcement_scope import reach
    from .sync import refresh_devices
    return refresh_devices(set(reach()))


register_job(refresh_enforcement_sets, "interval", hours=1)
