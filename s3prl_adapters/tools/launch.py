"""`run_downstream.py` runs as child processes forked from one server process that has already
imported torch and S3PRL (bridge/preload.py), so a run does not pay those imports again.

Each child is what `run_downstream.py ARGS > LOG 2>&1` would be: its own process (own memory, own
RNG and torch state, S3PRL's globals fresh), output appended to the log, exit status kept; it also
runs the exit hooks a plain interpreter runs, in its order (the feature cache flushes its writes
there; joblib stops its workers), which multiprocessing's children skip otherwise."""

import json
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from typing import Callable, Dict, List, Optional

from s3prl_adapters.errors import UserError

_CONTEXT = None


def _context():
    """The fork server, started on first use with this process's environment (threads included:
    OpenMP reads OMP_NUM_THREADS when torch is first imported, which happens in the server)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["s3prl_adapters.bridge.preload"])
    return _CONTEXT


def _launcher_main(argv: List[str]) -> None:
    from s3prl_adapters.bridge.launcher import main

    sys.argv = ["run_downstream.py"] + list(argv)
    main(list(argv))


def _install_evaluation_gate(control) -> None:
    """After each evaluation during training the run tells its supervisor and waits for its verdict
    (the supervisor then reads the evaluation's printed metric and either answers or kills the run)."""
    from s3prl_adapters.bridge import runner_hook

    def gate(split: str, step: int) -> None:
        control.send((split, step))
        control.recv()

    runner_hook.EVALUATION_GATE = gate


def _child(entry: Callable[[List[str]], None], argv: List[str], log_path: str, threads: int, usage_path: str,
           control=None, env: Optional[Dict[str, str]] = None) -> None:
    import atexit
    import resource
    import threading
    import traceback

    os.environ.update(env or {})  # e.g. CUDA_VISIBLE_DEVICES: read when CUDA first initialises, after the fork

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout.reconfigure(line_buffering=True)  # each printed line reaches the log (and a watcher) at once
    code = 0
    try:
        import torch

        torch.set_num_threads(threads)
        if control is not None:
            _install_evaluation_gate(control)
        entry(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 -- reported in the log like an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        # What an interpreter does at exit, in its order: first threading's shutdown (it joins
        # non-daemon threads and runs the hooks libraries register there, e.g. joblib stopping its
        # worker processes, which S3PRL's sv recipe starts), then the atexit handlers (ours flush
        # the caches; multiprocessing's joins child processes, which would otherwise wait forever).
        threading._shutdown()
        atexit._run_exitfuncs()
        with open(usage_path, "w") as f:
            json.dump({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run_downstream(argv: List[str], log_path: str, threads: int, stream: bool = False,
                   watch: Optional[Callable[[str], bool]] = None, env: Optional[Dict[str, str]] = None,
                   processes: int = 1) -> Dict[str, float]:
    """`run_downstream.py *argv` in a forked child, output appended to `log_path` (and echoed to
    stderr when `stream`); returns its wall seconds, peak RSS and whether `watch` stopped it. A failed
    run raises UserError with the log's last line. `env`: variables set in the child (a GPU of its own);
    `processes` > 1: under torchrun, one process per GPU (DDP), in a subprocess instead of a fork."""
    if processes > 1:
        return run_distributed(argv, log_path, threads, processes, env)
    return run_in_child(_launcher_main, argv, log_path, threads, stream, name="run_downstream.py", watch=watch, env=env)


def run_distributed(argv: List[str], log_path: str, threads: int, processes: int,
                    env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """`torchrun --nproc_per_node P run_downstream.py *argv` (our launcher passes --local_rank on), output
    appended to `log_path`; a free rendezvous port of its own."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = os.path.dirname(sys.executable)
    command = [os.path.join(bin_dir, "torchrun"), "--nproc_per_node", str(processes), "--master_port", str(port),
               os.path.join(bin_dir, "run_downstream.py"), *argv]
    start = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads), **(env or {})))
    if proc.returncode != 0:
        tail = open(log_path, errors="replace").read().strip().splitlines()[-1:] or ["?"]
        raise UserError(f"torchrun ({processes} processes) run_downstream.py {' '.join(argv[:7])}... exited "
                        f"{proc.returncode}: {tail[0]} (log: {log_path})")
    return {"seconds": time.time() - start, "peak_rss_mb": 0.0, "stopped": False}


def run_in_child(entry: Callable[[List[str]], None], argv: List[str], log_path: str, threads: int,
                 stream: bool = False, name: str = "run",
                 watch: Optional[Callable[[str], bool]] = None, env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """`entry(argv)` (a module-level function) in a child forked from the server, as above. `watch`
    receives the log's new text, as whole lines; when it returns True the child is killed (SIGKILL)
    and the result says `stopped`. With a watch, the run waits after each evaluation during training
    until the watch has read that evaluation's lines: a run the watch stops never goes past the
    evaluation that stopped it."""
    start = time.time()
    usage_path = f"{log_path}.usage.json"
    if os.path.exists(usage_path):
        os.remove(usage_path)
    open(log_path, "a").close()
    offset = os.path.getsize(log_path)
    control, child_control = _context().Pipe() if watch else (None, None)
    process = _context().Process(target=_child, args=(entry, list(argv), log_path, threads, usage_path, child_control,
                                                      env))
    process.start()
    stopped, pending = False, b""
    while True:
        waiting = []
        if control is not None:
            waiting = multiprocessing.connection.wait([control, process.sentinel], timeout=0.5)
        else:
            process.join(0.5)
        if stream or watch:
            with open(log_path, "rb") as f:
                f.seek(offset)
                new = f.read()
            offset += len(new)
            if stream:
                sys.stderr.write(new.decode(errors="replace"))
            if watch and not stopped:
                pending += new
                lines, _, pending = pending.rpartition(b"\n")  # whole lines only
                if lines and watch(lines.decode(errors="replace") + "\n"):
                    process.kill()
                    process.join()
                    stopped = True
        if control in waiting and not stopped:
            try:
                control.recv()  # the run evaluated and waits: its lines are read above, so it may go on
                control.send("go")
            except (EOFError, OSError):  # it ended meanwhile
                pass
        if process.exitcode is not None:
            break
    peak = 0.0
    if os.path.exists(usage_path):
        with open(usage_path) as f:
            peak = json.load(f)["peak_rss_mb"]
        os.remove(usage_path)
    if process.exitcode != 0 and not stopped:
        tail = open(log_path, errors="replace").read().strip().splitlines()[-1:] or ["?"]
        raise UserError(f"{name} {' '.join(argv[:7])}... exited {process.exitcode}: {tail[0]} "
                        f"(log: {log_path})")
    return {"seconds": time.time() - start, "peak_rss_mb": peak, "stopped": stopped}
