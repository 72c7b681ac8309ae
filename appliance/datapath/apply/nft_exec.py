"""Running nftables commands without a process per command: libnftables in-process, `nft` as the fallback.

Why: every converge pass lists our table and writes one transaction; with the `nft` binary each of those is a fork +
exec (~4 ms of CPU for a small transaction, several times the change itself when one pod is added).
libnftables (`libnftables.so.1`, Debian package libnftables1, a dependency of the `nft` binary) takes the same
command text through `nft_run_cmd_from_buffer`; we bind it with ctypes (Debian's python3-nftables binding is a
ctypes wrapper for the system Python only, and the project's venv cannot see it).

- One `nft_ctx` per thread (a context is not thread-safe), created on first use, with its output and error streams
  buffered so a command returns (rc, stdout, stderr) like the `nft` binary (same messages, no input file name).
- `netns=None` (the services, which run inside their namespace): the calling thread's context.
- `netns="NAME"` (tests, testbeds, the benchmarks): a short-lived thread enters `/run/netns/NAME` with setns(2) (the
  network namespace is per thread on Linux, so the rest of the process stays where it is), creates a context there
  (its netlink socket belongs to that namespace), runs the command, frees the context and ends. Measured here: the
  thread and setns cost ~0.2 ms of CPU, a small transaction ~0.2 ms, against ~4 ms for `ip netns exec NAME nft -f -`
  (process starts). A thread kept alive per namespace would save little and would keep a deleted namespace (and its
  veths) alive. A fresh context has an empty cache, but so has every `nft` process.
- Listings cost the same either way: nft 1.0.6 fills its cache with the whole ruleset, set elements included, before
  any list command (~0.2 s of CPU next to a 40k-element table). Existence checks therefore use netlink
  (`kernel_fingerprint.table_exists`), and resyncs avoid listing when the fingerprint says nothing changed.
- When the library cannot be loaded (or EGRESSGW_NFT_BACKEND=subprocess), every call runs `nft` as before; the
  switch is logged once.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from appliance.core.events import EventLogger

log = EventLogger("egressgw.nft")

LIBRARY = "libnftables.so.1"
#: `subprocess` forces the `nft` binary (a host whose libnftables misbehaves; comparing the two in a benchmark)
BACKEND_ENV = "EGRESSGW_NFT_BACKEND"
NETNS_DIR = "/run/netns"

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON (libnftables.h)
_OUTPUT_TERSE = 1 << 11  # NFT_CTX_OUTPUT_TERSE
_CLONE_NEWNET = 0x40000000
#: the C library already linked into this process (setns(2) has no wrapper in Python 3.11's os module)
_LIBC = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")
Result = tuple[int, str, str]


class _Library:
    """The few libnftables calls we use, with their C signatures."""

    def __init__(self, name: str) -> None:
        lib = ctypes.CDLL(name, use_errno=True)
        vp = ctypes.c_void_p
        lib.nft_ctx_new.argtypes, lib.nft_ctx_new.restype = [ctypes.c_uint32], vp
        lib.nft_ctx_free.argtypes, lib.nft_ctx_free.restype = [vp], None
        lib.nft_ctx_buffer_output.argtypes, lib.nft_ctx_buffer_output.restype = [vp], ctypes.c_int
        lib.nft_ctx_buffer_error.argtypes, lib.nft_ctx_buffer_error.restype = [vp], ctypes.c_int
        lib.nft_ctx_output_set_flags.argtypes, lib.nft_ctx_output_set_flags.restype = [vp, ctypes.c_uint], None
        lib.nft_ctx_get_output_buffer.argtypes, lib.nft_ctx_get_output_buffer.restype = [vp], ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes, lib.nft_ctx_get_error_buffer.restype = [vp], ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes, lib.nft_run_cmd_from_buffer.restype = [vp, ctypes.c_char_p], ctypes.c_int
        self.lib = lib

    def new_ctx(self) -> int:
        ctx = self.lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        if self.lib.nft_ctx_buffer_output(ctx) != 0 or self.lib.nft_ctx_buffer_error(ctx) != 0:
            self.lib.nft_ctx_free(ctx)
            raise OSError("nft_ctx_buffer_output/error failed")
        return int(ctx)

    def free_ctx(self, ctx: int) -> None:
        self.lib.nft_ctx_free(ctx)

    def run(self, ctx: int, text: str, flags: int) -> Result:
        self.lib.nft_ctx_output_set_flags(ctx, flags)
        rc = self.lib.nft_run_cmd_from_buffer(ctx, text.encode())
        # reading a buffer also rewinds it for the next command of this context
        out = (self.lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return (0 if rc == 0 else 1), out, err


class _ThreadContext:
    """A thread's own context, freed when the thread ends (its thread-local storage is dropped)."""

    def __init__(self, lib: _Library) -> None:
        self.lib, self.ctx = lib, lib.new_ctx()

    def __del__(self) -> None:
        self.lib.free_ctx(self.ctx)


def _setns(netns: str) -> None:
    """Move the calling thread (only it) into the named network namespace."""
    fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread that has entered `netns`; returns its value or raises its exception."""
    box: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            _setns(netns)
            box.append(fn())
        except BaseException as e:  # handed to the caller's thread
            errors.append(e)

    t = threading.Thread(target=body, name=f"nft-netns-{netns}", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return box[0]


class NftExecutor:
    """Runs nft command text in a namespace; libnftables when it loads, else the `nft` binary."""

    def __init__(self, library: str | None = LIBRARY) -> None:
        self._library_name = library
        self._lib: _Library | None = None
        self._loaded = False
        self._load_lock = threading.Lock()
        self._local = threading.local()

    @property
    def backend(self) -> str:
        return "libnftables" if self._library() is not None else "subprocess"

    def _library(self) -> _Library | None:
        if self._loaded:
            return self._lib
        with self._load_lock:
            if not self._loaded:
                if self._library_name is None or os.environ.get(BACKEND_ENV) == "subprocess":
                    log.info("nft.backend", backend="subprocess", reason="configured")
                else:
                    try:
                        self._lib = _Library(self._library_name)
                    except (OSError, AttributeError) as e:
                        log.warning("nft.backend", backend="subprocess", reason=f"{self._library_name}: {e}")
                self._loaded = True
        return self._lib

    def run(self, text: str, *, netns: str | None, json: bool = False, terse: bool = False) -> Result:
        lib = self._library()
        flags = (_OUTPUT_JSON if json else 0) | (_OUTPUT_TERSE if terse else 0)
        if lib is None:
            return _run_binary(text, netns=netns, json=json, terse=terse)
        if netns is None:
            own: _ThreadContext | None = getattr(self._local, "ctx", None)
            if own is None:
                own = self._local.ctx = _ThreadContext(lib)
            return lib.run(own.ctx, text, flags)

        def once() -> Result:
            ctx = lib.new_ctx()
            try:
                return lib.run(ctx, text, flags)
            finally:
                lib.free_ctx(ctx)

        try:
            return in_netns(netns, once)
        except OSError as e:
            return 1, "", f"{e}\n"


def _run_binary(text: str, *, netns: str | None, json: bool, terse: bool) -> Result:
    flags = [*(["-j"] if json else []), *(["-t"] if terse else [])]
    # `nft -j -f -` reads JSON commands (and prints nothing for a list): a JSON listing is one command on argv
    argv, stdin = (["nft", *flags, *text.split()], None) if json else (["nft", *flags, "-f", "-"], text)
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout, proc.stderr


#: the process-wide executor every applier uses
EXECUTOR = NftExecutor()


def run_nft(text: str, *, netns: str | None, json: bool = False, terse: bool = False) -> Result:
    """Run nft command text (what `nft -f -` reads: one atomic transaction, or list commands) in `netns`.

    With `json`, the text is one list command (the `nft` fallback runs it as `nft -j ARGS`).

    Returns (rc, stdout, stderr) as the binary would: rc 0 on success, nft's error message in stderr otherwise.
    """
    return EXECUTOR.run(text, netns=netns, json=json, terse=terse)


def list_json(args: Sequence[str], netns: str | None) -> Result:
    """`nft -j ARGS...` (e.g. `("list", "table", "inet", "egressgw")`): (rc, JSON text, stderr)."""
    return EXECUTOR.run(" ".join(args) + "\n", netns=netns, json=True)


def backend() -> str:
    """`libnftables` or `subprocess`: what `run_nft` uses in this process."""
    return EXECUTOR.backend
