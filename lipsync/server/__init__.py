"""The REST shim: the hosted visual-dubbing API's endpoints over :func:`lipsync.dub`.

``create_app`` builds the FastAPI application (``lipsync.server.app``); the durable store is
``lipsync.server.store``, the worker pool that runs the jobs is ``lipsync.server.jobs``,
signed webhook delivery is ``lipsync.server.webhooks`` and outgoing HTTP (URL assets,
webhook POSTs) is ``lipsync.server.remote``.
Everything here needs the ``server`` extra: ``pip install 'lipsync[server]'``.
"""
