"""Seeded byte-mutation fuzzing of the movie readers, many mutants per subprocess, with a watchdog per mutant.

A worker process (``python harness.py --worker``) reads one JSON request per line on stdin (a mutant's path),
opens it with :func:`napari_localize.io.movies.open_movie`, reads every frame, and answers one JSON line. The
parent gives each mutant ``timeout`` seconds: no answer is a hang (the worker is killed and restarted); a worker
that dies is a crash (its signal is recorded). Outcomes per mutant:

- ``read``: opened and read in full with the original frame count (or a warning said what differs);
- ``clean``: refused with a project error (:class:`~napari_localize.core.errors.LocalizeError`) naming the file;
- ``traceback``: any other exception, or a project error that does not name the file;
- ``hang``, ``crash``; ``lost``: read without error or warning but with a different number of frames.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUTCOMES = ("read", "clean", "traceback", "hang", "crash", "lost")


# ------------------------------------------------------------------------------------------------ mutators
def mutate_bytes(data: bytes, rng: random.Random, protect: int = 0) -> bytes:
    """One seeded mutation: random bytes, a cut, a zeroed or copied or deleted block, or an integer edit;
    ``protect`` leading bytes (a magic number) are left alone half of the time, so the readers get past it."""
    b = bytearray(data)
    n = len(b)
    lo = protect if rng.random() < 0.5 else 0
    # headers and the end (nd2 chunk maps, HDF5 superblocks, TIFF IFDs) hold most of the structure
    def where():
        r = rng.random()
        if r < 0.4:
            return rng.randrange(lo, min(n, lo + 4096))
        if r < 0.6:
            return rng.randrange(max(lo, n - 4096), n)
        return rng.randrange(lo, n)

    kind = rng.choice(("flip", "flip", "flip", "cut", "zero", "copy", "delete", "int"))
    if kind == "flip":
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            b[where()] = rng.randrange(256)
    elif kind == "cut":
        del b[rng.randrange(lo, n):]
    elif kind == "zero":
        a = where()
        b[a: a + rng.choice((4, 64, 512, 4096))] = bytes(min(n - a, rng.choice((4, 64, 512, 4096))))
        b = b[:n] if len(b) > n else b
    elif kind == "copy":
        a, c = where(), where()
        k = rng.choice((8, 64, 512))
        b[c: c + k] = data[a: a + k]
    elif kind == "delete":
        a = where()
        del b[a: a + rng.choice((1, 4, 64, 512))]
    else:  # a plausible-looking integer where a count or an offset may be
        a = where()
        value = rng.choice((0, 1, 2, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)))
        b[a: a + 4] = value.to_bytes(4, "little")
    return bytes(b)


YAML_VALUES = ("null", "[1, 2]", ".inf", "-.inf", ".nan", "-1", "0", "1e12", "99999999999999999999", "'>u2'",
               "'<u2'", "float16", "complex64", "bool", "'x'", "{a: 1}", "''", "2.5", "True")
ALIAS_BOMB = ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
              "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
              "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
              "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n")


def mutate_raw_yaml(raw: bytes, text: str, rng: random.Random) -> tuple[bytes, str]:
    """A mutant of a ``.raw`` + ``.yaml`` pair: a key's value replaced, the text byte-mutated, an alias bomb
    added, or the raw data cut."""
    r = rng.random()
    if r < 0.45:
        lines = text.splitlines()
        keys = [i for i, ln in enumerate(lines) if ln.split(":")[0] in ("Byte Order", "Data Type", "Frames",
                                                                        "Height", "Width")]
        i = rng.choice(keys)
        lines[i] = lines[i].split(":")[0] + ": " + rng.choice(YAML_VALUES)
        return raw, "\n".join(lines) + "\n"
    if r < 0.7:
        return raw, mutate_bytes(text.encode(), rng).decode("utf-8", "replace")
    if r < 0.8:
        return raw, text + ALIAS_BOMB
    return mutate_bytes(raw, rng), text


# ------------------------------------------------------------------------------------------------ worker side
def _worker():
    import resource
    import warnings

    try:  # a mutant that claims a huge frame must give a clean error, not eat the machine
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    except (ValueError, OSError):
        pass
    sys.path.insert(0, REPO)
    import numpy as np

    from napari_localize.core.errors import LocalizeError
    from napari_localize.io.movies import open_movie

    for line in sys.stdin:
        req = json.loads(line)
        path = req["path"]
        answer = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with open_movie(path, **req.get("options", {})) as movie:
                    n = movie.shape[0]
                    step = max(1, (4 << 20) // max(1, movie.shape[1] * movie.shape[2]))
                    total = 0
                    for a in range(0, n, step):
                        block = np.asarray(movie[a: a + step])
                        total += block.shape[0]
                    answer = {"status": "ok", "frames": int(n), "read": int(total)}
            except LocalizeError as exc:
                msg = str(exc)
                named = os.path.basename(path) in msg or os.path.basename(os.path.splitext(path)[0]) in msg
                answer = {"status": "clean" if named and "\n" not in msg.strip() else "unclear",
                          "type": type(exc).__name__, "message": msg[:300]}
            except Exception as exc:  # noqa: BLE001 (what the fuzzing looks for)
                answer = {"status": "traceback", "type": type(exc).__name__, "message": str(exc)[:300]}
        answer["warned"] = [str(w.message)[:200] for w in caught if issubclass(w.category, UserWarning)
                            and "not closed before garbage" not in str(w.message)]
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ parent side
@dataclass
class Counts:
    case: str
    tried: int = 0
    outcomes: dict = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    examples: dict = field(default_factory=dict)

    def add(self, outcome, detail):
        self.tried += 1
        self.outcomes[outcome] += 1
        self.examples.setdefault(outcome, []).append(detail)

    def row(self) -> str:
        o = self.outcomes
        return (f"| {self.case} | {self.tried} | {o['read']} | {o['clean']} | {o['traceback']} | {o['hang']} | "
                f"{o['crash']} | {o['lost']} |")


HEADER = ("| case class | tried | read intact | clean errors | tracebacks | hangs | crashes | data lost |\n"
          "|---|---|---|---|---|---|---|---|")


class Worker:
    def __init__(self):
        self.proc = None
        self.start()

    def start(self):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
                                     bufsize=1)
        self.ready = False

    def ask(self, request: dict, timeout: float):
        """``(answer dict, None)``, or ``(None, "hang" | "crash:<code>")``."""
        p = self.proc
        try:
            p.stdin.write(json.dumps(request) + "\n")
            p.stdin.flush()
        except (BrokenPipeError, OSError):
            code = p.wait()
            self.start()
            return None, f"crash:{code}"
        # the first request also pays for the imports
        limit = timeout + (30.0 if not self.ready else 0.0)
        r, _, _ = select.select([p.stdout], [], [], limit)
        if not r:
            p.kill()
            p.wait()
            self.start()
            return None, "hang"
        line = p.stdout.readline()
        if not line:
            code = p.wait()
            self.start()
            return None, f"crash:{code}"
        self.ready = True
        return json.loads(line), None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def classify(answer, problem, expected_frames) -> tuple[str, str]:
    if problem == "hang":
        return "hang", "no answer"
    if problem:
        return "crash", problem
    status = answer["status"]
    if status == "clean":
        return "clean", answer["type"]
    if status in ("traceback", "unclear"):
        return "traceback", f"{answer['type']}: {answer['message']}"
    if answer["frames"] != expected_frames or answer["read"] != answer["frames"]:
        if answer["warned"] and answer["read"] == answer["frames"]:
            return "read", "warned: " + answer["warned"][0]
        return "lost", f"{answer['read']} of {expected_frames} frames, warnings {answer['warned']}"
    return "read", ""


def fuzz_file(case: str, seed_path: str, workdir: str, n: int, seed: int, timeout: float = 10.0,
              options: dict | None = None, worker: Worker | None = None) -> Counts:
    """Fuzz one seed file with ``n`` seeded mutants (same seed, same mutants)."""
    sys.path.insert(0, REPO)
    from napari_localize.io.movies import open_movie

    with open_movie(seed_path, **(options or {})) as m:
        expected = m.shape[0]
    data = open(seed_path, "rb").read()
    rng = random.Random(f"{case}-{seed}")
    counts = Counts(case)
    own = worker is None
    worker = worker or Worker()
    name = os.path.basename(seed_path)
    protect = 8 if not seed_path.endswith(".ims") else 8
    try:
        for k in range(n):
            mutant = os.path.join(workdir, f"m{k:05d}_{name}")
            with open(mutant, "wb") as fh:
                fh.write(mutate_bytes(data, rng, protect))
            answer, problem = worker.ask({"path": mutant, "options": options or {}}, timeout)
            outcome, detail = classify(answer, problem, expected)
            counts.add(outcome, f"{os.path.basename(mutant)}: {detail}")
            if outcome not in ("hang", "crash", "lost", "traceback"):
                os.remove(mutant)  # keep the interesting ones for a look
    finally:
        if own:
            worker.close()
    return counts


def fuzz_raw(case: str, raw_path: str, workdir: str, n: int, seed: int, timeout: float = 10.0,
             worker: Worker | None = None) -> Counts:
    """Fuzz a ``.raw`` movie and its ``.yaml`` sidecar."""
    raw = open(raw_path, "rb").read()
    text = open(os.path.splitext(raw_path)[0] + ".yaml").read()
    expected = None
    import yaml

    expected = int(yaml.safe_load(text)["Frames"])
    rng = random.Random(f"{case}-{seed}")
    counts = Counts(case)
    own = worker is None
    worker = worker or Worker()
    try:
        for k in range(n):
            m_raw, m_text = mutate_raw_yaml(raw, text, rng)
            base = os.path.join(workdir, f"m{k:05d}_movie")
            with open(base + ".raw", "wb") as fh:
                fh.write(m_raw)
            with open(base + ".yaml", "w") as fh:
                fh.write(m_text)
            answer, problem = worker.ask({"path": base + ".raw"}, timeout)
            outcome, detail = classify(answer, problem, expected)
            if outcome == "read" and answer is not None and answer["frames"] != expected:
                outcome = "lost"
            counts.add(outcome, f"{os.path.basename(base)}: {detail}")
            if outcome not in ("hang", "crash", "lost", "traceback"):
                os.remove(base + ".raw")
                os.remove(base + ".yaml")
    finally:
        if own:
            worker.close()
    return counts


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
