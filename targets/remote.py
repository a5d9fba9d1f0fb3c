"""Devices over ssh: ``--device ssh://user@host[:port]``.

The system ``ssh``/``scp`` clients run with argument lists (no local shell).  Files travel into a content-
addressed cache on the device (``~/.cache/graphprune/blobs/<sha256><ext>``), so a model, an engine or the
runner script is copied once; local file names never reach the device.  The one remote command line is
built from fixed words and ``shlex.quote``-d values.  Host keys are checked (``StrictHostKeyChecking=yes``)
unless the caller opts in to trusting a new key; ``BatchMode=yes`` never prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphprune.errors import GraphpruneError, TargetError, TargetUnavailableError, UsageError
from graphprune.model_io import file_sha256
from graphprune.targets.executor import Executor, move_into_place, parse_runner_output, runner_source

log = logging.getLogger(__name__)

_URL = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,63})@)?"
                  r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?/?$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")
_SAFE_EXT = (".onnx", ".ort", ".engine", ".plan", ".trt", ".npz", ".py", ".cache")


class RemoteDeviceError(TargetError):
    """ssh reached the device but could not log in (host key, authentication) or run there."""


@dataclass(frozen=True)
class SshOptions:
    """How to reach the device.  Host-key checking stays on unless ``accept_new_host_key``."""

    known_hosts: Path | None = None
    identity: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: int = 10
    remote_python: str = "python3"
    remote_cache: str = "~/.cache/graphprune"
    ssh: str = "ssh"
    scp: str = "scp"


def _ssh_file_value(path: Path, what: str) -> str:
    """A path for ssh's config parser: quoted, with %-tokens escaped; refuse what cannot be quoted."""
    text = str(path.expanduser().resolve())
    if any(c in text for c in '"\n\r\0'):
        raise UsageError(f"{what} path {text!r} contains a quote or newline, which ssh cannot take")
    return text.replace("%", "%%")


class SshExecutor(Executor):
    """Runs runner jobs on a device through ssh, with files cached there by content hash."""

    def __init__(self, url: str, options: SshOptions | None = None) -> None:
        super().__init__()
        m = _URL.match(url)
        if m is None:
            raise UsageError(f"--device {url!r}: expected ssh://[user@]host[:port] (letters, digits, '.', '-')")
        self.user, self.host = m.group("user"), m.group("host").strip("[]")
        self.port = int(m.group("port")) if m.group("port") else None
        if self.port is not None and not 0 < self.port < 65536:
            raise UsageError(f"--device {url!r}: port {self.port} is out of range")
        self.options = options or SshOptions()
        cache = self.options.remote_cache
        if not _SAFE_PATH.match(cache.removeprefix("~/")) or ".." in cache.split("/"):
            raise UsageError(f"--remote-cache {cache!r}: use letters, digits and . _ / + - only")
        self.location = "ssh://" + (f"{self.user}@" if self.user else "") + m.group("host") + (
            f":{self.port}" if self.port else "")
        self.python = self.options.remote_python
        self._root: str | None = None
        self._pending: list[tuple[str, str]] = []  # (uploaded part, final blob) renamed by the next run
        self._known: set[str] = set()  # blobs there (or pending) for this executor
        self._runner_blob = hashlib.sha256(runner_source().encode()).hexdigest() + ".py"

    # -------------------------------------------------------------------------------------- commands
    def _common(self) -> list[str]:
        o = self.options
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(o.connect_timeout)}",
                "-o", "StrictHostKeyChecking=" + ("accept-new" if o.accept_new_host_key else "yes"),
                "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if o.known_hosts is not None:
            args += ["-o", f'UserKnownHostsFile="{_ssh_file_value(o.known_hosts, "--known-hosts")}"']
        if o.identity is not None:
            if not o.identity.is_file():
                raise UsageError(f"--identity {o.identity}: no such file")
            args += ["-o", "IdentitiesOnly=yes", "-o", f'IdentityFile="{_ssh_file_value(o.identity, "--identity")}"']
        return args

    def _dest(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def _ssh(self, command: str, stdin: str = "", timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        port = ["-p", str(self.port)] if self.port else []
        args = [self.options.ssh, *self._common(), *port, "--", self._dest(), command]
        log.debug("ssh: %s", args)
        try:
            return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError as e:
            raise TargetUnavailableError(f"the ssh client '{self.options.ssh}' is not installed") from e
        except subprocess.TimeoutExpired as e:
            raise TargetError(f"{self.location}: the remote command took longer than {timeout:.0f} s") from e

    def _scp(self, src: str, dst: str) -> None:
        port = ["-P", str(self.port)] if self.port else []
        args = [self.options.scp, "-q", *self._common(), *port, "--", src, dst]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, check=False)
        except FileNotFoundError as e:
            raise TargetUnavailableError(f"the scp client '{self.options.scp}' is not installed") from e
        if proc.returncode != 0:
            raise self._classify(proc.stderr, proc.returncode, "copy")

    def _classify(self, stderr: str, rc: int, what: str) -> GraphpruneError:
        """One-line, actionable errors from ssh's stderr."""
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not set(ln.strip()) <= {"@"}]
        last = lines[-1] if lines else f"exit status {rc}"
        where, text = self.location, stderr
        if "IDENTIFICATION HAS CHANGED" in text or "Host key for" in text and "has changed" in text:
            return RemoteDeviceError(
                f"{where}: the device's host key does not match known_hosts (the device was reinstalled, "
                "or someone is in between); verify the key, then remove the stale entry with ssh-keygen -R")
        if "Host key verification failed" in text or "No ED25519 host key is known" in text \
                or "host key is not known" in text.lower():
            return RemoteDeviceError(
                f"{where}: the device's host key is not in known_hosts and host-key checking is on; verify it "
                "and add it (ssh-keyscan), point --known-hosts at a file that has it, or pass "
                "--insecure-accept-new-host-key to trust it on first use")
        if "Permission denied" in text or "Too many authentication failures" in text:
            return RemoteDeviceError(
                f"{where}: authentication failed ({last}); pass --identity with a key listed in the "
                "device's authorized_keys (BatchMode: no password prompts)")
        if rc == 255 and any(k in text for k in ("Connection refused", "timed out", "No route to host",
                                                 "Could not resolve", "Network is unreachable",
                                                 "Connection reset", "Connection closed")):
            return TargetUnavailableError(f"cannot reach {where}: {last}")
        return RemoteDeviceError(f"{where}: ssh {what} failed ({last})")

    def _q_cache(self) -> str:
        cache = self.options.remote_cache
        return '"$HOME"/' + shlex.quote(cache[2:]) if cache.startswith("~/") else shlex.quote(cache)

    # ---------------------------------------------------------------------------------------- staging
    def _prepare(self, names: list[str]) -> set[str]:
        """Create the cache folders, learn their absolute path, and list which blobs are already there."""
        probe = (f"set -e; mkdir -p -- {self._q_cache()}/blobs {self._q_cache()}/out; "
                 f"cd -- {self._q_cache()}; pwd -P; for f in {' '.join(shlex.quote(n) for n in names)}; "
                 'do if [ -f "blobs/$f" ]; then echo "have $f"; fi; done')
        proc = self._ssh(probe)
        if proc.returncode != 0:
            raise self._classify(proc.stderr, proc.returncode, "login")
        out = proc.stdout.splitlines()
        root = out[0].strip() if out else ""
        if not root.startswith("/") or not _SAFE_PATH.match(root):
            raise RemoteDeviceError(f"{self.location}: unusable cache folder {root!r} on the device; "
                                    "pass --remote-cache with a plain absolute path")
        self._root = root
        return {ln[5:].strip() for ln in out[1:] if ln.startswith("have ")}

    def stage(self, paths: list[Path]) -> list[str]:
        blobs = [self._blob_name(Path(p)) for p in paths]
        return self._stage_blobs(list(zip(paths, blobs, strict=True)))

    def _stage_blobs(self, items: list[tuple[Path | None, str]]) -> list[str]:
        wanted = len(items)
        if self._runner_blob not in self._known:  # the runner travels with the first files
            items = [*items, (None, self._runner_blob)]
        unknown = [b for _, b in items if b not in self._known]
        if unknown or self._root is None:
            have = self._prepare(unknown)
            self.transfers["cached"].extend(b for b in unknown if b in have)
            self._known.update(have)
        out = []
        for local, blob in items:
            final = f"{self._root}/blobs/{blob}"
            if blob not in self._known:
                part = f"{self._root}/blobs/.{blob}.{uuid.uuid4().hex}.part"
                if local is None:  # the runner script, from memory
                    with tempfile.NamedTemporaryFile("w", suffix=".py", encoding="utf-8") as f:
                        f.write(runner_source())
                        f.flush()
                        self._scp(f.name, f"{self._dest()}:{part}")
                else:
                    self._scp(str(local.resolve()), f"{self._dest()}:{part}")
                self._pending.append((part, final))
                self._known.add(blob)
                self.transfers["uploaded"].append(blob)
            out.append(final)
        return out[:wanted]

    @staticmethod
    def _blob_name(path: Path) -> str:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        ext = path.suffix.lower() if path.suffix.lower() in _SAFE_EXT else ".bin"
        return file_sha256(path) + ext

    def scratch(self) -> str:
        if self._root is None:
            self._prepare([])
        return f"{self._root}/out/{uuid.uuid4().hex}"

    # ------------------------------------------------------------------------------------------- run
    def run(self, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        [runner] = self._stage_blobs([(None, self._runner_blob)])
        job = {"protocol": 1, **job}
        if job.get("scratch"):
            job["publish_dir"] = f"{self._root}/blobs"
        moves = "".join(f"mv -f -- {shlex.quote(p)} {shlex.quote(f)} && " for p, f in self._pending)
        command = f"cd -- {shlex.quote(str(self._root))} && {moves}exec {shlex.quote(self.python)} {shlex.quote(runner)}"
        proc = self._ssh(command, stdin=json.dumps(job), timeout=timeout)
        self._pending.clear()
        if proc.returncode == 255 and "GRAPHPRUNE-RESULT" not in proc.stdout:
            raise self._classify(proc.stderr, proc.returncode, "run")
        for line in proc.stderr.splitlines():
            log.info("%s runner: %s", self.location, line)
        return parse_runner_output(proc.stdout, proc.stderr, proc.returncode, self.location, self.python)

    def fetch(self, path: str, dest: Path) -> None:
        if not _SAFE_PATH.match(path):
            raise RemoteDeviceError(f"{self.location}: refusing to fetch unusual path {path!r}")
        with tempfile.TemporaryDirectory(prefix="graphprune-fetch-", dir=dest.parent) as tmp:
            local = Path(tmp) / "download"
            self._scp(f"{self._dest()}:{path}", str(local))
            move_into_place(local, dest)
