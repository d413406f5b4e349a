"""HiGHS in a child process, so that a MILP solve ends at its deadline whatever HiGHS is doing
(both sides: :data:`HIGHS` in the parent, :func:`main` in the child).

HiGHS checks its ``time_limit`` only now and then: measured here, its presolve took 3.5 s of a 2 s
budget, and the root node's randomized rounding (bound propagation, no callback, no option to turn
it off) 20 s of a 5 s budget. A thread cannot be stopped; a process can. ``qcert.verify.milp``
starts this file as a script (``python highs_process.py``; it imports nothing of qcert, so the
child starts in a fraction of a second), sends it one MILP at a time and kills it when the answer
is late. The child points its file descriptor 1 at /dev/null before HiGHS is loaded (HiGHS prints
a banner on stdout when it is constructed) and answers on a duplicate of the original stdout.

Protocol (binary pipes): a request is one JSON line ``{"deadline": wall-clock seconds,
"options": {...}}`` followed by the arrays ``ARRAYS`` in ``.npy`` format (no pickles); the reply is
one JSON line ``{"status": "feasible" | "infeasible" | HiGHS's status}``, followed by the
solution's column values in ``.npy`` format when feasible.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a script: its folder (qcert/verify) must not shadow modules
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import atexit  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from subprocess import PIPE  # noqa: E402
from typing import IO, Any  # noqa: E402

import numpy as np  # noqa: E402

#: the model's arrays, in this order (rows in CSR form; every column is integer)
ARRAYS = ("col_lower", "col_upper", "row_lower", "row_upper", "start", "index", "value")


def write_arrays(f: IO[bytes], arrays: list[np.ndarray]) -> None:
    """Arrays in ``.npy`` format, as one blob preceded by its length (8 bytes, little endian)."""
    buf = io.BytesIO()
    for a in arrays:
        np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    f.write(len(buf.getvalue()).to_bytes(8, "little") + buf.getvalue())


def read_arrays(f: IO[bytes], n: int) -> list[np.ndarray]:
    size = int.from_bytes(_read_exactly(f, 8), "little")
    buf = io.BytesIO(_read_exactly(f, size))
    return [np.lib.format.read_array(buf, allow_pickle=False) for _ in range(n)]


def _read_exactly(f: IO[bytes], n: int) -> bytes:
    parts, left = [], n
    while left:
        part = f.read(left)
        if not part:
            raise EOFError("the pipe closed in the middle of a message")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def solve(header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[str, np.ndarray | None]:
    """One feasibility MILP with HiGHS; its time limit is what is left until the deadline."""
    import highspy

    col_lo, col_hi, row_lo, row_hi, start, index, value = arrays
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    for k, v in header.get("options", {}).items():
        h.setOptionValue(k, v)
    ncol, nrow = col_lo.size, row_lo.size
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = ncol, nrow
    lp.col_cost_ = np.zeros(ncol)
    lp.col_lower_, lp.col_upper_ = col_lo, col_hi
    lp.row_lower_, lp.row_upper_ = row_lo, row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = ncol, nrow
    lp.a_matrix_.start_ = start.astype(np.int32)
    lp.a_matrix_.index_ = index.astype(np.int32)
    lp.a_matrix_.value_ = value.astype(np.float64)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * ncol
    h.passModel(lp)
    left = float(header["deadline"]) - time.time()
    if left <= 0:
        return "time limit (before the solve)", None
    h.setOptionValue("time_limit", left)
    h.run()
    st = h.getModelStatus()
    if st == highspy.HighsModelStatus.kOptimal:
        return "feasible", np.array(h.getSolution().col_value[:ncol], dtype=np.float64)
    if st == highspy.HighsModelStatus.kInfeasible:
        return "infeasible", None
    return str(h.modelStatusToString(st)), None


#: HiGHS's presolve ignored the time limit (3.5 s of presolve on a 2 s budget for a small CNN);
#: without it the MILPs measured here were solved faster too
HIGHS_OPTIONS = {
    "presolve": "off",
    "mip_feasibility_tolerance": 1e-7,
    "primal_feasibility_tolerance": 1e-7,
}


class HighsProcess:
    """The HiGHS child process (this file run as a script): one MILP at a time, killed (and a fresh one
    started) when its answer is later than the deadline plus a small grace."""

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, os.path.abspath(__file__)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.replies: queue.Queue[tuple[dict, np.ndarray | None] | None] = queue.Queue()
        self.lock = threading.Lock()

    def start(self) -> None:
        """Start the child unless it runs (it loads while the caller builds its MILP)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        self.proc = subprocess.Popen(self.command, stdin=PIPE, stdout=PIPE)
        self.replies = queue.Queue()
        threading.Thread(
            target=read_replies, args=(self.proc.stdout, self.replies), daemon=True
        ).start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()
            self.proc = None

    def solve(self, arrays: list[np.ndarray], deadline: float) -> tuple[str, np.ndarray | None]:
        """Status and (when feasible) column values; ``deadline`` is ``time.monotonic()``."""
        with self.lock:
            self.start()
            assert self.proc is not None and self.proc.stdin is not None
            left = deadline - time.monotonic()
            head = {"deadline": time.time() + left, "options": HIGHS_OPTIONS}
            try:
                self.proc.stdin.write(json.dumps(head).encode() + b"\n")
                write_arrays(self.proc.stdin, arrays)
                self.proc.stdin.flush()
                grace = 0.05 + 0.01 * max(0.0, left)
                reply = self.replies.get(timeout=max(0.0, deadline + grace - time.monotonic()))
            except queue.Empty:
                self.stop()
                self.start()  # the next query need not wait for it
                return "time limit (HiGHS stopped at the deadline)", None
            except OSError as e:
                self.stop()
                return f"HiGHS process failed ({e})", None
            if reply is None:
                self.stop()
                return "HiGHS process ended", None
            return str(reply[0]["status"]), reply[1]


def read_replies(f: IO[bytes], out: queue.Queue) -> None:
    try:
        while line := f.readline():
            head = json.loads(line)
            out.put((head, read_arrays(f, 1)[0] if head.get("x") else None))
    except (OSError, ValueError, EOFError):
        pass
    out.put(None)


HIGHS = HighsProcess()
atexit.register(HIGHS.stop)


def main() -> int:
    """The child: answer requests from stdin until it closes (Ctrl-C is the parent's to handle)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # whatever HiGHS prints on stdout goes nowhere
    requests = sys.stdin.buffer
    while True:
        line = requests.readline()
        if not line:
            return 0
        header = json.loads(line)
        arrays = read_arrays(requests, len(ARRAYS))
        try:
            status, x = solve(header, arrays)
        except Exception as e:  # reported to the parent (a timeout there), the child lives on
            status, x = f"HiGHS error: {type(e).__name__}: {e}", None
        replies.write(json.dumps({"status": status, "x": x is not None}).encode() + b"\n")
        if x is not None:
            write_arrays(replies, [x])
        replies.flush()


if __name__ == "__main__":
    sys.exit(main())
