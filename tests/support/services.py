"""Real servers for tests: Mosquitto and influxd, on free loopback ports, temp dirs, stopped after.

Each waits on a condition with a deadline (the port answering), never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {deadline_s}s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


def which(name: str, *extra: str) -> str:
    found = shutil.which(name) or next((p for p in extra if Path(p).exists()), None)
    if not found:
        raise RuntimeError(f"'{name}' is not installed: run the README's test command, which installs it")
    return found


@dataclass
class Mosquitto:
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_conf: str = ""  # more mosquitto.conf lines (e.g. an acl_file)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> None:
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            # started as root, mosquitto switches to the user `mosquitto`, which cannot write the
            # test's data dir: the session database is then never saved ("Permission denied") and a
            # restart loses every persistent session; stay the user that owns the directory
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            # the default of 1000 silently drops QoS 1 messages once a subscriber falls behind
            "max_queued_messages 1000000\n"
            "max_inflight_messages 100\n"
            "log_dest stderr\n"
            + self.extra_conf
        )
        with open(self.data_dir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([which("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)],
                                         stdout=log, stderr=log)
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def dynsec_plugin() -> str:
    """Mosquitto's dynamic-security plugin, which Debian's mosquitto package ships."""
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") +
                   glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    if not found:
        raise RuntimeError("mosquitto_dynamic_security.so not found; install Debian's mosquitto package")
    return found[0]


def subscribe_only_to(data_dir: Path, pattern: str) -> str:
    """mosquitto.conf lines for its dynamic-security plugin letting anonymous clients subscribe
    to ``pattern`` only: the broker answers any other SUBSCRIBE with a failure (0x80). (Plain
    ``acl_file`` rules do not refuse a subscription in Mosquitto 2.0, they only filter delivery.)"""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "dynsec.json"
    config.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [],
        "roles": [{"rolename": "reader", "acls": [{"acltype": "subscribePattern", "topic": pattern, "allow": True}]}],
        "groups": [{"groupname": "anon", "roles": [{"rolename": "reader"}], "clients": []}],
        "anonymousGroup": "anon"}), encoding="utf-8")
    return f"plugin {dynsec_plugin()}\nplugin_opt_config_file {config}\n"


@contextlib.contextmanager
def mosquitto(data_dir: Path, extra_conf: str = "") -> Iterator[Mosquitto]:
    data_dir.mkdir(parents=True, exist_ok=True)
    m = Mosquitto(free_port(), data_dir, extra_conf=extra_conf)
    m.start()
    try:
        yield m
    finally:
        m.stop()
