"""The push room: waking devices through APNs, and the push certificate that allows it.

  apns.py          request_push / the sender thread / the scheduler job;
  cert.py          the push identity in CERTS_DIR and its life cycle;
  cert_request.py  Apple's push certificate request (pure);
  cli.py           ``flask mdm push ...``.
"""
