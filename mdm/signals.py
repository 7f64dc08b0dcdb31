"""Events between rooms, so the protocol layer never imports the DDM or UI rooms. Rooms connect their
receivers in their ``init_app`` (the DDM room: mdm/ddm/jobs.py).

Receivers run synchronously inside the sender's transaction: keep them short (record work, don't do it).
"""
from blinker import Namespace

_signals = Namespace()

# sender: the Device. Sent after TokenUpdate marked it enrolled (first time only).
device_enrolled = _signals.signal("device-enrolled")
# sender: the Device; kwargs: changed = set of attribute names (os_version, build_version,
# product_name, software_update_device_id, is_supervised, ...). Sent when inventory facts change.
device_facts_changed = _signals.signal("device-facts-changed")
# sender: the Device. Sent when Authenticate starts an enrollment (a first or a new one), in its transaction:
# rooms drop per-device state of the old enrollment (the DDM room: the declaration set it served).
device_reenrolled = _signals.signal("device-reenrolled")
# sender: the Device. Sent after CheckOut.
device_checked_out = _signals.signal("device-checked-out")
# sender: the DeviceGroup; kwargs: device_ids (set). Membership changed.
group_membership_changed = _signals.signal("group-membership-changed")
