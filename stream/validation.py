"""Checks of a decoded reading batch against the configuration.

The codec (``stream.wire``) has already checked structure; here we check what only
the plant configuration and the clock can tell. A batch that fails goes to the
dead-letter topic whole, with the reason, so nothing is silently dropped and the
sender can fix and resend it.
"""

from __future__ import annotations

import numpy as np

from stream.config import AssetConfig
from stream.wire import ReadingBatch, is_good


class InvalidBatch(ValueError):
    """The batch is well-formed but cannot be accepted. The text says why."""


def validate_batch(
    batch: ReadingBatch, asset: AssetConfig, tag_position: dict[str, int], now_us: int | None, max_future_us: int
) -> np.ndarray:
    """Check ``batch`` and return, per sample, the position of its tag in ``asset.tags``.

    ``tag_position`` maps the asset's configured tag ids to their positions.
    Raises InvalidBatch for an empty batch, an unknown tag, a Good-quality sample
    that is NaN or infinite (a Bad one may carry any value: servers send NaN with
    Bad status), or a timestamp more than ``max_future_us`` ahead of ``now_us``
    (not checked when ``now_us`` is None: replays of history).
    """
    n = len(batch)
    if n == 0:
        raise InvalidBatch("empty batch: it holds no samples")
    unknown = [tag for tag in batch.tags if tag not in tag_position]
    if unknown:
        shown = ", ".join(f'"{t}"' for t in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InvalidBatch(f'unknown tag(s) {shown} for asset "{asset.id}": add them to the configuration or fix the sender')
    finite = np.isfinite(batch.value)
    if not finite.all():
        bad_good = ~finite & is_good(batch.quality)
        if bad_good.any():
            i = int(np.argmax(bad_good))
            raise InvalidBatch(
                f'sample {i} (tag "{batch.tags[batch.tag_index[i]]}") has value {batch.value[i]} with Good quality; '
                "a non-finite value must carry Bad or Uncertain quality"
            )
    latest = int(batch.ts_us.max())
    if now_us is not None and latest > now_us + max_future_us:
        ahead_s = (latest - now_us) / 1e6
        raise InvalidBatch(
            f"timestamp {latest} us is {ahead_s:.0f} s in the future (limit {max_future_us / 1e6:.0f} s): "
            "check the source clock and that timestamps are microseconds since 1970 UTC"
        )
    if int(batch.ts_us.min()) < 0:
        raise InvalidBatch("timestamps before 1970 are not accepted: timestamps are microseconds since 1970 UTC")
    # Map the batch's own tag numbering onto the configured one, for all samples at once.
    batch_to_config = np.fromiter((tag_position[t] for t in batch.tags), dtype=np.intp, count=len(batch.tags))
    return batch_to_config[batch.tag_index]
