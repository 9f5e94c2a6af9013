"""The checkpoint agent: one instance of a private checkpoint, dialling out to its control plane.

A :class:`Checkpoint` keeps one WebSocket connection to the control plane open (``wss://``, or
``ws://`` only when the settings say ``insecure=True``), authenticated with a bearer token. It
receives monitor definitions (``sync``) and run commands (``run``), runs the checks through a
:class:`~probekit.Runner`, and sends the results back (``results``) until the control plane acks
them. The messages are the typed values of :mod:`probekit.protocol`::

    settings = CheckpointSettings(
        url="wss://control.example/checkpoint",
        token=Secret(os.environ["CHECKPOINT_TOKEN"]),
        checkpoint_id="dc1",
        instance_id="dc1-a",
        spool_path="/var/lib/probekit/spool.db",
    )
    async with Checkpoint(settings) as checkpoint:
        await stop_requested.wait()
    # leaving the block drains: finish in-flight checks, deliver their results, close

or ``await Checkpoint(settings).run()``, which returns after :meth:`Checkpoint.drain` (or a
``drain`` from the control plane) has finished. For SIGTERM, call :meth:`Checkpoint.request_drain`
from the signal handler (``loop.add_signal_handler(signal.SIGTERM, checkpoint.request_drain)``).

What it promises:

- **The network belongs to the operator.** Every check runs with a context whose dialer has the
  *local* ``settings.policy``; nothing the control plane sends changes it, and a definition aimed
  at a denied address gives a ``DOWN``/``policy_denied`` result without a socket being opened.
  A ``context`` passed to the constructor contributes its dialer's resolver, connector, address
  preference and source address, its clock and its secrets; its dialer's *policy* and its
  deadline are ignored (the dialer is copied with ``settings.policy`` put in). The connection
  to the control plane itself goes through the same dialer: its host is resolved and checked
  against ``settings.policy`` and the socket connected to the checked address; a denied control
  plane is never dialled (each attempt is logged at ERROR, naming the policy, and retried).
- **At-least-once delivery.** Every result is written to the spool (SQLite, WAL) before it is
  sent, and leaves it only when the control plane acks its id. Results sent on a connection that
  is lost unacked are sent again on the next one; the control plane deduplicates by
  ``result_id`` (a fresh ``uuid4().hex`` per result). The spool is bounded: when full, the oldest
  results are dropped and counted (``spool_dropped``).
- **Autonomous mode.** While the last ``sync`` said ``autonomous``, or while disconnected (with
  ``autonomous_when_disconnected``), the held definitions run on a local :class:`Scheduler` at
  their intervals (reason ``scheduled``); their results wait in the spool for the channel. Being
  connected again in driven mode stops the local schedule (runs in flight finish).
- **Resilient channel.** Reconnects with exponential backoff and full jitter (``reconnect_initial``
  doubling up to ``reconnect_max``); a dead peer is noticed by WebSocket pings, and the connection
  given up, within ``ping_interval + 2 * ping_timeout`` seconds. A frame the control plane gets
  wrong is answered with an ``error`` message and the connection keeps serving; only
  ``bad_version`` and ``unauthorized`` also close it (then the checkpoint reconnects).
- **Deadlines.** A ``run`` with a ``deadline`` hands it to the runner as an absolute deadline,
  counted from the run's arrival; the earlier of it and the definition's ``timeouts.total``
  ends the check.
- **Definitions.** A ``sync`` definition that does not build is answered with
  ``error``/``bad_field`` (``ref`` = its monitor id) and not held; the others are. A ``run`` for
  an unknown monitor or with an invalid inline definition is answered with an ``error`` (``ref``
  = its request id) and gives no result. ``{"secret": NAME}`` references resolve in
  ``settings.secrets``; definitions from the network may not read environment variables or
  files. Definitions are held in memory only: after a restart the ``hello`` holds nothing and the
  control plane sends everything again.
- **Privacy switches** apply before a result is spooled: ``strip_addresses`` drops
  ``Result.address`` and replaces IP addresses in the error message with ``<address>``
  (``tls.server_name`` is kept); ``strip_tls_chain`` drops the certificate chain;
  ``strip_messages`` empties error messages and the observed texts of assertions (they may hold
  response content).
- **The token never shows**: it is sent only in the handshake's ``Authorization`` header, and
  the logger handed to ``websockets`` masks it, even at DEBUG.
- **Self-observability**: :attr:`Checkpoint.stats`, a ``heartbeat`` every
  ``heartbeat_interval`` seconds, and optionally ``/metrics`` (Prometheus text) and ``/ready``
  (200 when connected or running the local schedule, else 503) over HTTP on
  ``metrics_host:metrics_port``.

Logging goes to ``probekit.checkpoint`` (and ``websockets.client`` for the channel itself).
"""

from __future__ import annotations

from ._agent import Checkpoint
from ._settings import CheckpointSettings

__all__ = ["Checkpoint", "CheckpointSettings"]
