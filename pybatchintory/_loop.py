"""The event-loop thread behind the sync face.

One asyncio loop in a daemon thread, reached through an anyio blocking portal. Daemon,
and closed by an ``atexit`` hook rather than by a generator finalised at shutdown, so an
inventory nobody closed never keeps the interpreter alive. A child made by ``fork()``
inherits the object but not the thread: calls from it raise at once instead of waiting
for a loop that does not exist there.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .exceptions import InventoryNotOpenError

__all__ = ["EventLoopThread"]

T = TypeVar("T")
_STOP_SECONDS = 10.0

# Every loop still running in this process, stopped at exit (weakly held).
_running: weakref.WeakSet[EventLoopThread] = weakref.WeakSet()


class EventLoopThread:
    """An asyncio event loop in a daemon thread, with a portal to call into it."""

    def __init__(self, name: str = "pybatchintory-event-loop") -> None:
        ready: Future[BlockingPortal] = Future()

        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(serve, backend="asyncio")
            except BaseException as exc:  # reported to the creator, not lost in the thread
                if not ready.done():
                    ready.set_exception(exc)

        self._pid = os.getpid()
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        self.portal = ready.result()
        self._on_exit: Callable[[], Any] | None = None
        _running.add(self)

    @property
    def forked(self) -> bool:
        """True in a child process: the loop's thread stayed in the parent."""
        return os.getpid() != self._pid

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` in the loop (a coroutine function is awaited) and wait."""
        if self.forked:
            raise InventoryNotOpenError(
                "this SyncInventory was made in process "
                f"{self._pid}, before a fork: its event loop did not follow into this "
                "process. Make a new SyncInventory in the child (the module-level "
                "acquire_batch and acquire_batches do so by themselves)"
            )
        try:
            return self.portal.call(func, *args)
        except RuntimeError as exc:
            if str(exc) != "This portal is not running":
                raise
            raise InventoryNotOpenError(
                "the SyncInventory was closed (or configure() replaced the default one): "
                "its batches can no longer be finished; their leases run out and they are "
                "handed out again"
            ) from None

    def on_exit(self, cleanup: Callable[[], Any]) -> None:
        """Run the coroutine function ``cleanup`` in the loop before it stops at exit."""
        self._on_exit = cleanup

    def stop(self) -> None:
        """Stop the loop and wait for its thread (bounded: a stuck loop is left behind)."""
        _running.discard(self)
        if self.forked:
            return
        try:
            self.portal.call(self.portal.stop, True)
        except RuntimeError:  # already stopped
            pass
        self._thread.join(_STOP_SECONDS)


@atexit.register
def _stop_all_at_exit() -> None:
    """Close what nobody closed while the loops' threads still run (atexit comes before
    the interpreter freezes daemon threads)."""
    for loop in list(_running):
        if loop.forked:
            continue
        cleanup = loop._on_exit
        try:
            if cleanup is not None:
                loop.call(cleanup)
        except Exception:  # best effort at exit: the process ends either way
            pass
        loop.stop()


def _forget_after_fork() -> None:
    # The child has none of these threads; nothing of the parent's may be stopped here.
    _running.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
