"""The devices room: administration services over the enrolled devices that the admin UI (mdm/ui/)
and the JSON API (mdm/api/) both call, so neither imports the other:
  query.py     the device list: search, filters, sort, pages (with the DDM room's patch columns);
  commands.py  admin commands: which ones, queuing one or many with the audit, bulk confirmation.
It sits above the MDM core (mdm/protocol/queue.py) and the DDM room (mdm/ddm/), which never import it."""
