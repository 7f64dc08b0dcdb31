"""A realistic demo fleet: which devices, on which OS, in which time zone, behaving how.

``fleet_mix(count, seed)`` returns ``count`` (DeviceProfile, Behaviour) pairs, the same for the same
seed. Models are iPhones and iPads that Apple's feed lists (mdm/ddm/data/gdmf-pmv.json), each on an
iOS/iPadOS version it can run: not older than the version it shipped with, not newer than its last
supported major (iPhone XR and iPad 7th generation stop at 18). About three in four are supervised.
Time zones are IANA names the device reports in DeviceInformation ``TimeZone``.

Behaviour is what the person holding the device does once an update is scheduled by an enforcement
declaration (install-reason.yaml names the triggers):
- ``prompt``: taps the notification within the hour (reason ``notification``);
- ``tonight``: chooses "Install Tonight", 02:00-04:00 device-local (reason ``install-tonight``);
- ``deadline``: does nothing; iOS installs at the enforced deadline (reason ``declaration``).
``fails_with`` makes the first attempt fail (failure-reason.yaml ``reason``, e.g. not enough free space);
the user frees space ``retry_after_hours`` later and installs from Settings, or never (None).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .device import KNOWN_BUILDS, DeviceProfile

# (product name, marketing name, version it shipped with, last major it runs)
MODELS = (
    ("iPhone11,8", "iPhone XR", "12.0", 18),
    ("iPhone12,1", "iPhone 11", "13.0", 26),
    ("iPhone14,7", "iPhone 14", "16.0", 26),
    ("iPhone15,2", "iPhone 14 Pro", "16.0", 26),
    ("iPhone16,1", "iPhone 15 Pro", "17.0", 26),
    ("iPhone17,1", "iPhone 16 Pro", "18.0", 26),
    ("iPad7,11", "iPad (7th generation)", "13.1", 18),
    ("iPad13,18", "iPad (10th generation)", "16.1", 26),
    ("iPad14,8", "iPad Air 11-inch (M2)", "17.4", 26),
    ("iPad16,3", "iPad Pro 11-inch (M4)", "17.5", 26),
)
# Versions a device is found on (all in KNOWN_BUILDS): behind the newest release, so there is work to do.
START_VERSIONS = ("17.5", "17.6", "18.0", "18.5", "18.6", "26.0", "26.5")
TIME_ZONES = ("America/New_York", "America/Chicago", "America/Los_Angeles", "America/Sao_Paulo",
              "Europe/London", "Europe/Berlin", "Asia/Kolkata", "Asia/Tokyo", "Australia/Sydney")
HABITS = ("prompt", "tonight", "deadline")
# One device in ten fails its first attempt; Apple's status item carries the reason as a free string.
FAILURE_REASON = "InsufficientDiskSpace"
SUPERVISED_SHARE = 0.75


@dataclass(frozen=True)
class Behaviour:
    habit: str = "deadline"
    fails_with: str | None = None
    retry_after_hours: float | None = None


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def versions_for(launch_version: str, last_major: int) -> list[str]:
    """The start versions this model can run."""
    return [v for v in START_VERSIONS if _key(launch_version) <= _key(v) and _key(v)[0] <= last_major]


# Four in ten tap the notification, three choose Install Tonight, three wait for the deadline.
_HABIT_CYCLE = ("prompt", "tonight", "deadline", "prompt", "deadline", "tonight", "deadline", "prompt",
                "tonight", "prompt")


def _behaviour(index: int, rng: random.Random, failure_share: float) -> Behaviour:
    habit = _HABIT_CYCLE[index % len(_HABIT_CYCLE)]
    fails = int((index + 1) * failure_share) > int(index * failure_share)     # evenly spread
    if not fails:
        return Behaviour(habit)
    # A failing device is one whose user tries early, so the failure shows within minutes, not at the deadline.
    return Behaviour("prompt", FAILURE_REASON, round(rng.uniform(6, 18), 1))


def fleet_mix(count: int, seed: int = 1, failure_share: float = 0.1) -> list[tuple[DeviceProfile, Behaviour]]:
    rng = random.Random(seed)
    fleet = []
    for index in range(count):
        product, marketing, launch, last_major = MODELS[index % len(MODELS)] if index < len(MODELS) \
            else rng.choice(MODELS)
        version = rng.choice(versions_for(launch, last_major))
        profile = DeviceProfile(product_name=product, os_version=version, build_version=KNOWN_BUILDS[version],
                                supervised=rng.random() < SUPERVISED_SHARE,
                                device_name=f"{marketing} {index + 1:03d}",
                                time_zone=TIME_ZONES[index % len(TIME_ZONES)])
        fleet.append((profile, _behaviour(index, rng, failure_share)))
    return fleet
