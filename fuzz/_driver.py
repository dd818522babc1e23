"""Run a fuzz target under atheris when it is installed, else a plain-Python loop.

``python fuzz/fuzz_client.py [-runs=N] [-max_total_time=S] [corpus_dir]``: with
atheris these are libFuzzer flags. Without it, the fallback honours
``-runs=N`` and ``-max_total_time=S`` and feeds random and mutated inputs
(seeded by ``FUZZ_SEED``), so the harness stays runnable anywhere.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _flag(argv: Sequence[str], name: str, default: int) -> int:
    for arg in argv:
        if arg.startswith(f"-{name}="):
            return int(arg.split("=", 1)[1])
    return default


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.3 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6:
            data[rng.randint(0, len(data)) : rng.randint(0, len(data))] = rng.randbytes(
                rng.randint(0, 16)
            )
        elif choice < 0.8 and data:
            del data[rng.randrange(len(data))]
        else:
            data += rng.choice([b"\r\n", b"\n", b"\x00", b"\r", b" ", b"="])
    return bytes(data)


def instrumented() -> contextlib.AbstractContextManager:
    """Import the code under test inside this, so atheris sees its coverage."""
    if _atheris() is not None:
        return _atheris().instrument_imports()
    return contextlib.nullcontext()


def _atheris():
    if os.environ.get("FUZZ_NO_ATHERIS"):
        return None
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        return None
    return atheris


def run(target: Callable[[bytes], None], seeds: Sequence[bytes]) -> None:
    atheris = _atheris()
    if atheris is not None:
        atheris.Setup(sys.argv, target)
        atheris.Fuzz()
        return
    argv = sys.argv[1:]
    runs = _flag(argv, "runs", 100_000)
    limit = _flag(argv, "max_total_time", 0)
    # Reproducible inputs for a fuzzer, not secrets: a seeded PRNG is the point.
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "0")))  # noqa: S311
    corpus = [*seeds]
    for arg in argv:
        if not arg.startswith("-") and Path(arg).is_dir():
            corpus += [p.read_bytes() for p in Path(arg).iterdir() if p.is_file()]
    started = time.monotonic()
    done = 0
    while done < runs and not (limit and time.monotonic() - started > limit):
        data = (
            rng.randbytes(rng.randint(0, 300))
            if rng.random() < 0.2
            else _mutate(rng, rng.choice(corpus))
        )
        try:
            target(data)
        except Exception:
            crash = ROOT / "fuzz" / f"crash-{int(time.time())}-{done}"
            crash.write_bytes(data)
            traceback.print_exc()
            print(f"crash after {done} runs; input saved to {crash}", file=sys.stderr)
            sys.exit(1)
        done += 1
    print(f"fallback fuzzer (no atheris): {done} runs, no crash", file=sys.stderr)
