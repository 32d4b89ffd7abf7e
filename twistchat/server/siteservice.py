"""
One twisted.web site on one endpoint of its own, while the service runs: the
common part of the operator endpoints (C{--metrics},
L{twistchat.server.metrics}) and the web port (C{--web},
L{twistchat.server.web}).

A listen that fails at once (a port in use) is raised from C{startService}
as L{CannotStart}, so that twistd reports it at start, as one line logged and
written to C{err} (twistd's standard error as it was before twistd led it to
the log), as the chat port's is; a subclass adds what it does once listening
(its log line) by extending C{_listening}.
"""

from __future__ import annotations

from typing import IO

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from twistchat.server.service import CannotStart


class SiteService(service.Service):
    """
    Serve C{site} on C{endpoint} while running.

    @cvar serving: what is served, for the error when it cannot listen
        (e.g. C{"metrics"}).
    @ivar port: the listening port while running, else None.
    """

    serving = "a web site"
    log = Logger()
    #: Where a failure to listen is written as one line besides the log (set
    #: by the plugin to the standard error it started with); None: the
    #: exception's message alone reports it, and it reaches only the log.
    err: IO[str] | None = None

    def __init__(self, endpoint: IStreamServerEndpoint, description: str,
                 site: server.Site) -> None:
        """
        @param description: the endpoint as the operator gave it, for the error.
        """
        self.endpoint = endpoint
        self.description = description
        self.site = site
        self.port: IListeningPort | None = None
        self._failed: Failure | None = None

    def startService(self) -> None:
        """
        @raise CannotStart: if the endpoint cannot listen.
        """
        d = self.endpoint.listen(self.site)
        d.addCallbacks(self._listening, self._not_listening)
        if self._failed is not None:
            error = self._failed.value
            reason = getattr(error, "socketError", None) or error
            message = f"cannot serve {self.serving} on {self.description}: {reason}"
            if self.err is None:
                raise CannotStart(message)
            stop = CannotStart(message, reported=True)
            self.log.error("{line}", line=stop.line)
            self.err.write(stop.line + "\n")
            self.err.flush()
            raise stop
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated

    def _listening(self, port: IListeningPort) -> None:
        self.port = port

    def _not_listening(self, failure: Failure) -> None:
        self._failed = failure

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's, unannotated
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: None)


__all__ = ["SiteService"]
