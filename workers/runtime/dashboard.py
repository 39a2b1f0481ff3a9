"""rq-dashboard served by `rsample dashboard` itself, in this process, as rq-dashboard documents embedding it.

No child process: stopping `rsample dashboard` (Ctrl-C, SIGTERM, SIGKILL) stops the dashboard with it, and the
Redis URL, password included, never appears on a command line. Jobs are read with RQ's JSON serializer, as
rsample writes them: with rq-dashboard's default (pickle) its job pages would fail.
"""

from __future__ import annotations

import logging
import signal
import sys


def make_app(redis_url: str):
    """rq-dashboard's Flask blueprint on a fresh app, reading this Redis with the JSON serializer."""
    import rq_dashboard
    import rq_dashboard.web
    from flask import Flask
    from rq import Worker
    from rq.serializers import JSONSerializer
    from rq_dashboard.web import config as dashboard_config
    from rq_dashboard.web import setup_rq_connection

    class JSONWorker(Worker):
        """rq-dashboard (0.9) lists workers without its serializer setting: a busy worker's current job was unpickled,
        and the Workers page failed (HTTP 500) whenever any worker ran a job."""

        @classmethod
        def all(cls, *args, **kwargs):
            kwargs.setdefault("serializer", JSONSerializer)
            return super().all(*args, **kwargs)

    rq_dashboard.web.Worker = JSONWorker
    app = Flask("rsample.dashboard")
    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    app.config["DEPRECATED_OPTIONS"] = []
    dashboard_config.serializer = JSONSerializer
    setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint)
    return app


def serve_dashboard(redis_url: str, bind: str, port: int) -> None:
    """Serves until SIGINT or SIGTERM, then returns: nothing is left running."""
    from werkzeug.serving import make_server

    server = make_server(bind, port, make_app(redis_url), threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
