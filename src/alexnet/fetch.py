"""Downloading one file: a progress bar, a digest check, and nothing half-written left behind.

Used by ``alexnet download`` (data sets) and by published weights (:mod:`alexnet.pretrained`).
The bytes go to a temporary file beside the destination, renamed over it only when the whole file
arrived and matched its published digest, so an interrupted or corrupted download never leaves a
file that a later run would take as good.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from .atomic import atomic_path
from .errors import AlexNetError


def fetch_url(
    url: str,
    dest: Path,
    show_progress: bool | None,
    error: type[AlexNetError],
    hint: str,
    digest: tuple[str, str] | None = None,
    unwritable: str = "",
) -> None:
    """Download ``url`` to ``dest``; ``error(...)`` in one line (with ``hint``) when it cannot.

    ``digest``: (hashlib algorithm, expected hex digest or its first characters, as torch.hub's
    file names carry a sha256 prefix); a file that does not match is not kept. ``unwritable``: what
    to do where ``dest``'s folder cannot be written (a read-only home), said instead of ``hint``.
    """
    from .runtime import progress_bar

    hasher = hashlib.new(digest[0]) if digest else None
    try:
        with atomic_path(dest, durable=False) as tmp, urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with progress_bar(total, f"download {dest.name}", show_progress, unit="B") as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    if hasher:
                        hasher.update(chunk)
                    bar.update(len(chunk))
            if hasher and not hasher.hexdigest().startswith(digest[1].lower()):
                raise error(f"{url}: the downloaded file's {digest[0]} is {hasher.hexdigest()}, not the published "
                            f"{digest[1]}: not kept (a corrupted or changed file; try again)")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        if isinstance(e, OSError) and not isinstance(e, urllib.error.URLError) and e.filename:  # ours, not the network's
            advice = f"; {unwritable}" if unwritable else ""
            raise error(f"cannot save {url} to {e.filename}: {e.strerror or e}{advice}") from None
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise error(f"cannot download {url}: {reason} ({hint})") from None
