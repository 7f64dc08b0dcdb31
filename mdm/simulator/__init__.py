"""A simulated iPhone that enrolls and talks MDM the real way, over HTTPS, for tests, demos and load."""
from .device import DeviceProfile, SimulatedDevice  # noqa: F401
