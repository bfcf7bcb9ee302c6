"""The REST shim: the hosted visual-dubbing API's endpoints over :func:`lipsync.dub`.

``create_app`` builds the FastAPI application (``lipsync.server.app``); the durable store is
``lipsync.server.store``, the worker pool that runs the jobs is ``lipsync.server.jobs``,
signed webhook delivery is ``lipsync.server.webhooks`` and outgoing HTTP (URL assets,
webhook POSTs) is ``lipsync.server.remote``. The job queue's backends are in
``lipsync.server.queues`` (the embedded one) and ``lipsync.server.redisqueue`` (Redis, for
workers elsewhere); the shim's endpoints for those workers are ``lipsync.server.workerapi``
and the worker itself is ``lipsync.server.remoteworker``.
The shim needs the ``server`` extra (``pip install 'lipsync[server]'``); the Redis queue and
a remote worker need the ``queue`` extra (``pip install 'lipsync[queue]'``), and a worker
needs nothing of the ``server`` one.
"""
