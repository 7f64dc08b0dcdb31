"""The protocol room: what an enrolled device talks to.

  views.py     PUT /mdm/checkin and PUT /mdm/connect (thin: authenticate, parse, call, commit);
  checkin.py   one function per check-in MessageType;
  certauth.py  which device is talking (Mdm-Signature, certificate binding);
  queue.py     the command queue;
  commands/    one module per MDM command;
  plistio.py   strict parsing of the property lists devices send.
It imports neither the DDM room, the UI nor the API (.importlinter).
"""
