"""Work for the next steps done ahead, in order, in a background thread: the training loop's windows are sampled,
collated and pinned while the accelerator runs the current step."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(make: Callable[[int], T], steps: Iterable[int], depth: int = 2) -> Iterator[T]:
    """``make(step)`` for every step, in order, each computed up to ``depth`` steps ahead in a background thread. An
    exception in ``make`` is raised here, at its step; closing the iterator early stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for step in steps:
                item = make(step)
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, raised at the step that failed
            ready.put((None, error))
            return
        ready.put((_DONE, None))

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
