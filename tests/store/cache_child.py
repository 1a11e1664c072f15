"""One process of the cache's concurrency tests: fetch a key through the cache and print it.

``python -m tests.store.cache_child ENDPOINT BUCKET CACHE_DIR KEY SHA256 WORK_DIR``. Its store
is the real S3 store with a gate in ``get_file``: the download is logged to ``WORK_DIR/downloads``
and then waits for ``WORK_DIR/release`` before it returns, so a test can hold one download
open and watch what another process does meanwhile.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from app.store.cache import BlobCache
from app.store.s3 import S3Store
from tests.store.conftest import s3_options
from tests.timing import scaled


class GatedStore(S3Store):
    work: Path

    def get_file(self, key: str, dest: Path) -> str:
        digest = super().get_file(key, dest)
        with (self.work / "downloads").open("a") as log:
            log.write(f"{key}\n")
        deadline = time.monotonic() + scaled(60)
        while not (self.work / "release").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.05)
        return digest


def main() -> None:
    endpoint, bucket, cache_dir, key, sha256, work = sys.argv[1:7]
    store = GatedStore(bucket, "gristmill/", s3_options(endpoint))
    store.work = Path(work)
    cache = BlobCache(Path(cache_dir), max_bytes=1 << 30)
    started = time.monotonic()
    path = cache.fetch(store, key, sha256)
    print(json.dumps({"path": str(path), "downloads": cache.downloads,
                      "seconds": time.monotonic() - started}))  # fmt: skip


if __name__ == "__main__":
    main()
