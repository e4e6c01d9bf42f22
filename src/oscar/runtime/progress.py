"""A progress bar for one compress or decompress call: the running stage, DDIM steps and tiles.

On two CPU cores a 12-megapixel photo takes tens of seconds to compress and about a minute to
decompress (``--steps 20``: several minutes); with no display the command looks hung.
:class:`StageProgress` is a stage recorder (``oscar.runtime.stages``): the codec already marks each
stage of its pipeline, and its inner loops report themselves with
:func:`oscar.runtime.stages.progress` (DDIM steps in ``OscarModel.denoise``, tiles in
``tiling.tiled_map``). The bar is drawn only on a terminal and only once the call has run for
``delay`` seconds, so quick images, pipes and logs get nothing extra; it is cleared when the call
ends.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from tqdm.auto import tqdm

MIN_INTERVAL = 0.1  # seconds between redraws (tqdm's default mininterval)


class StageProgress:
    """A tqdm bar over ``stages`` (in pipeline order) for one file, labelled ``label``.

    ``disable=None`` is tqdm's rule: drawn only when ``file`` is a terminal. ``position`` stacks
    it under another bar (the per-file bar of a multi-file run). Redraws come at most every
    ``interval`` seconds.
    """

    def __init__(
        self,
        stages: Sequence[str],
        label: str,
        *,
        position: int = 0,
        file: TextIO | None = None,
        disable: bool | None = None,
        delay: float = 1.0,
        interval: float = MIN_INTERVAL,
    ) -> None:
        self.stages = tuple(stages)
        self.label = label
        self._inner: dict[str, tuple[int, int]] = {}
        self._stage = ""
        self._drawn = -math.inf
        self._interval = interval
        # tqdm's own ``delay`` is not honoured by refresh(), which is how this bar redraws.
        self._show_from = time.monotonic() + delay
        self.bar = tqdm(
            total=len(self.stages),
            desc=label,
            unit="stage",
            position=position,
            leave=False,
            file=file if file is not None else sys.stderr,
            disable=disable,
            delay=delay,
            bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} stages [{elapsed}]",
        )

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Show ``name`` as the running stage; on leaving it, count the stages up to it done.

        A stage that runs again (``--max-bytes`` tries several levels) moves the bar back.
        """
        index = self.stages.index(name) if name in self.stages else None
        self._stage, self._inner = name, {}
        if index is not None:
            self.bar.n = index
        self._render()
        try:
            yield
        finally:
            if index is not None:
                self.bar.n = index + 1
            self._render()

    def inner_progress(self, what: str, current: int, total: int) -> None:
        """``what`` (``"step"``, ``"tile"``) number ``current`` of ``total`` starts.

        Loops nest (each DDIM step runs every tile): a report drops the counters of the loops
        that first reported after ``what``'s, which belong to its previous round.
        """
        names = list(self._inner)
        if what in names:
            for inner in names[names.index(what) + 1 :]:
                del self._inner[inner]
        self._inner[what] = (current, total)
        self._render()

    def _render(self) -> None:
        now = time.monotonic()
        if self.bar.disable or now < self._show_from or now - self._drawn < self._interval:
            return  # the next redraw shows the state as it is then
        self._drawn = now
        inner = ", ".join(f"{what} {n}/{total}" for what, (n, total) in self._inner.items())
        text = f"{self.label}: {self._stage}" + (f" ({inner})" if inner else "")
        self.bar.set_description_str(text, refresh=False)
        self.bar.refresh()
        # What update() records when it draws: close() clears the line only if it is set.
        self.bar.last_print_t = time.time()  # tqdm's clock

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
