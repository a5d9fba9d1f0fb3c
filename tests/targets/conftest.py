"""Fixtures for the targets tests: small models (session-wide) and a real OpenSSH server on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from target_helpers import SSHD, SshServer, conv_model, det_model, free_port, keygen, resize_model


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, m in {"dense": conv_model(16), "pruned": conv_model(8), "dynamic": conv_model(8, batch="N"),
                    "det": det_model(), "resize": resize_model()}.items():
        out[name] = d / f"{name}.onnx"
        onnx.save(m, out[name])
    return out


# ---------------------------------------------------------------------------------------------- sshd
@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 (random port) for the current user, keys made for the test."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server openssh-client)")
    root = tmp_path_factory.mktemp("sshd")
    host_key, user_key = root / "host_ed25519", root / "user_ed25519"
    keygen(host_key)
    keygen(user_key)
    shutil.copy(user_key.with_suffix(".pub"), root / "authorized_keys")
    port = free_port()
    user = os.environ.get("USER") or __import__("getpass").getuser()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 50",
    ]) + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # Debian's privilege-separation folder
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "sshd.log", "wb"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"sshd did not start: {(root / 'sshd.log').read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
    known = root / "known_hosts"
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    try:
        yield SshServer(port=port, user=user, identity=user_key, known_hosts=known, root=root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
