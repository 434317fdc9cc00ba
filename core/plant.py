"""The plant file: one YAML file describing the plant, validated with pydantic.

Errors name the file, the path inside it (``lines[0].machines[2].signals.good.counter_bits``),
what is wrong and, where it can, what would be right.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from core.model import COUNTER_SIGNALS, PRODUCT_SIGNAL, REASON_SIGNAL, STATE_SIGNAL, CanonicalState

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
ID_RE = re.compile(ID_PATTERN)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ReasonCategory = Literal[
    "breakdown", "changeover", "micro_stop", "speed", "quality", "starved", "blocked", "planned", "other"
]
Ident = Annotated[str, Field(pattern=ID_PATTERN)]
HHMM_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# Bounds on what a plant file may make the loader do: the demo plant is 3 KiB and a generated
# 2 000-machine plant under 2 MiB; a plant needs fewer than 10 levels of nesting.
MAX_PLANT_BYTES = 8 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_EVENTS = 300_000  # a generated 20 000-signal plant has 168 000
ECHO_CHARS = 80  # the longest piece of the file an error message repeats
MAX_PROBLEMS_SHOWN = 50
MQTT_TOPIC_MAX_BYTES = 65535
# Upper bounds of durations and rates, far above any plant's but low enough that nanoseconds,
# datetimes and products of them stay finite (micro_stop_s: 1e300 overflowed like .inf did)
DAY_S = 86_400.0
MAX_CYCLE_S = 7 * DAY_S
MAX_SIM_S = 1e10  # simulator times: tests and users write 1e9 for "never"


def _short(value: object, limit: int = ECHO_CHARS) -> str:
    """``str(value)`` cut to ``limit`` characters: error messages never repeat unbounded input."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _q(value: object) -> str:
    return f"'{_short(value)}'"


def mqtt_topic_filter_problem(topic: str) -> str | None:
    """Why ``topic`` is not a valid MQTT 3.1.1 topic filter, or None when it is one."""
    if not topic:
        return "an MQTT topic cannot be empty"
    if "\x00" in topic:
        return "an MQTT topic cannot contain a NUL character"
    if any("\ud800" <= c <= "\udfff" for c in topic):
        return "an MQTT topic must be valid UTF-8 (it holds a lone surrogate)"
    if len(topic.encode("utf-8")) > MQTT_TOPIC_MAX_BYTES:
        return f"an MQTT topic is at most {MQTT_TOPIC_MAX_BYTES} bytes of UTF-8"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"{_q(topic)} is not an MQTT topic filter: '#' must be the last level and alone in it"
        if "+" in level and level != "+":
            return f"{_q(topic)} is not an MQTT topic filter: '+' must be alone in its level"
    return None


def _distinct_codes(v: Any) -> Any:
    """Refuse keys of a code mapping that name the same number (``10`` and ``"10"``): the YAML
    loader sees two keys, but as numbers the last would silently win."""
    if isinstance(v, dict):
        seen: dict[int, Any] = {}
        for k in v:
            try:
                n = int(str(k).strip()) if not isinstance(k, bool) else None
            except ValueError:
                continue  # not a number: validation says so
            if n is not None and n in seen:
                raise ValueError(f"keys {_short(repr(seen[n]))} and {_short(repr(k))} are the same code {n}; "
                                 "keep one")
            if n is not None:
                seen[n] = k
    return v


class _Model(BaseModel):
    # allow_inf_nan: `.inf`, `.nan` and "1e999" are no durations or rates (an infinite
    # micro_stop_s once passed and broke /status)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LocalizedName(_Model):
    ja: str | None = None
    en: str | None = None

    @model_validator(mode="after")
    def _one(self) -> LocalizedName:
        if not self.ja and not self.en:
            raise ValueError("a name needs at least one of 'ja' or 'en'")
        return self


Name = str | LocalizedName


def label(name: Name | None, lang: str, fallback: str) -> str:
    """The name in ``lang``, else in the other language, else ``fallback`` (usually the id)."""
    if name is None:
        return fallback
    if isinstance(name, str):
        return name
    first = name.ja if lang == "ja" else name.en
    other = name.en if lang == "ja" else name.ja
    return first or other or fallback


def _hhmm(value: str) -> time:
    m = HHMM_RE.match(value)
    if not m:
        raise ValueError(f"{_q(value)} is not a wall-clock time; write it as \"HH:MM\", e.g. \"08:00\"")
    return time(int(m.group(1)), int(m.group(2)))


class Site(_Model):
    id: Ident
    name: Name | None = None
    timezone: str = "UTC"
    locale: Literal["ja", "en"] = "en"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
            close = difflib.get_close_matches(v, sorted(available_timezones()), n=1) if len(v) < 100 else []
            hint = f"; did you mean '{close[0]}'?" if close else "; use an IANA name like 'Asia/Tokyo'"
            raise ValueError(f"unknown time zone {_q(v)}{hint}") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _weekdays() -> list[Day]:
    return ["mon", "tue", "wed", "thu", "fri"]


class Shift(_Model):
    id: Ident
    name: Name | None = None  # shown wherever the shift appears (board header, report); default: the id
    start: str
    end: str
    days: list[Day] = Field(default_factory=_weekdays)
    breaks: list[tuple[str, str]] = Field(default_factory=list)

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: str) -> str:
        _hhmm(v)
        return v

    @field_validator("breaks")
    @classmethod
    def _breaks(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in v:
            _hhmm(a)
            _hhmm(b)
        return v

    @property
    def start_time(self) -> time:
        return _hhmm(self.start)

    @property
    def end_time(self) -> time:
        return _hhmm(self.end)

    def minutes(self) -> tuple[int, int]:
        """Start and end in minutes after the local midnight of the shift's day (end may pass 1440)."""
        s = self.start_time.hour * 60 + self.start_time.minute
        e = self.end_time.hour * 60 + self.end_time.minute
        if e <= s:
            e += 1440
        return s, e

    def break_minutes(self) -> list[tuple[int, int]]:
        """Breaks as minutes after the shift day's midnight, placed inside the shift."""
        s, _ = self.minutes()
        out = []
        for a, b in self.breaks:
            ta, tb = _hhmm(a), _hhmm(b)
            ma, mb = ta.hour * 60 + ta.minute, tb.hour * 60 + tb.minute
            if ma < s:
                ma += 1440
            while mb <= ma:
                mb += 1440
            out.append((ma, mb))
        return out


class Calendar(_Model):
    shifts: list[Shift] = Field(default_factory=list)
    holidays: list[date] = Field(default_factory=list)
    micro_stop_s: float = Field(default=120, ge=0, le=DAY_S)


class Reason(_Model):
    name: Name
    category: ReasonCategory = "other"


class Product(_Model):
    ideal_cycle_s: float = Field(gt=0, le=MAX_CYCLE_S)
    name: Name | None = None


_MAX_SECRET_FILE = 64 << 10


def read_secret_file(path: str | Path) -> str:
    """The secret a file holds (one final newline, as editors add it, is not part of it);
    ``ValueError`` starting with the path when it cannot be read, is too large, not UTF-8 or empty.
    Read bounded: a secret file named by mistake (a log, a disk image) must not be read whole."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SECRET_FILE + 1)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise ValueError(f"{path} is larger than {_MAX_SECRET_FILE >> 10} KiB; it should hold the secret alone")
    try:
        value = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not value:
        raise ValueError(f"{path} is empty")
    return value


class CredentialError(ValueError):
    """A source's password cannot be had (variable unset, file unreadable); names which."""


ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
log = logging.getLogger(__name__)


def _password_sources_problem(conn: OpcUaEndpoint | MqttBroker) -> str | None:
    given = [k for k in ("password", "password_env", "password_file") if getattr(conn, k) is not None]
    if len(given) > 1:
        return f"give at most one of password, password_env and password_file (got {' and '.join(given)})"
    if conn.password_env is not None and not ENV_NAME_RE.fullmatch(conn.password_env):
        return f"password_env {_q(conn.password_env)} is not an environment variable name (e.g. MQTT_PASSWORD)"
    if conn.password_file is not None and (not conn.password_file.strip() or "\x00" in conn.password_file):
        return "password_file must be a file path (relative to the plant file, or absolute)"
    if (conn.password_env is not None or conn.password_file is not None) and not conn.username:
        return "a password needs a 'username'"
    return None


def _resolve_password(conn: OpcUaEndpoint | MqttBroker, base_dir: Path | None) -> str | None:
    if conn.password_env is not None:
        value = os.environ.get(conn.password_env)
        if not value:
            raise CredentialError(f"the environment variable {conn.password_env} (password_env) is not set or empty")
        return value
    if conn.password_file is not None:
        path = Path(conn.password_file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            value = read_secret_file(path)
        except ValueError as e:
            raise CredentialError(f"password_file: {e}") from None
        return value
    return conn.password


class OpcUaEndpoint(_Model):
    endpoint: str
    security: Literal["none", "sign", "sign_and_encrypt"] = "none"
    # the client's side (the collector): who it logs in as, its certificate and key
    username: str | None = None
    password: str | None = None
    # or the password from an environment variable or a file (relative to the plant file), read
    # when the collector connects: the plant file need not hold a secret
    password_env: str | None = None
    password_file: str | None = None
    # security none sends the password in clear; only with this set does the plant file allow it
    allow_password_without_security: bool = False
    certificate: str | None = None
    private_key: str | None = None
    # with security on, the server's certificate is trusted when it is in `trust_dir` (DER or PEM
    # files; relative to the plant file) or its SHA-256 is `server_cert_sha256`; otherwise refused
    trust_dir: str | None = None
    server_cert_sha256: str | None = None
    # the bundled simulator's side (ignored by the collector): where it keeps its own certificate
    # and the generated client pair (default: the folder of `certificate`, else ./mieruka-certs),
    # and the users it accepts (default: `username`/`password`, if given)
    certificate_dir: str | None = None
    users: dict[str, str] | None = None
    _base_dir: Path | None = PrivateAttr(default=None)
    _warned_clear: bool = PrivateAttr(default=False)

    def resolve_password(self) -> str | None:
        """The password the collector logs in with (``password``, ``password_env`` or
        ``password_file``); :class:`CredentialError` names what is missing. With security none
        it warns, once, that the password travels in clear."""
        value = _resolve_password(self, self._base_dir)
        if value is not None and self.security == "none" and not self._warned_clear:
            self._warned_clear = True
            log.warning("OPC UA %s: security is none, so the password of user %r travels in clear over the "
                        "network (allow_password_without_security is set); use sign_and_encrypt", self.endpoint,
                        self.username)
        return value

    @model_validator(mode="after")
    def _credentials(self) -> OpcUaEndpoint:
        problem = _password_sources_problem(self)
        if problem:
            raise ValueError(problem)
        has_password = any(v is not None for v in (self.password, self.password_env, self.password_file))
        if has_password and self.security == "none" and not self.allow_password_without_security:
            raise ValueError("security: none would send the password in clear over the network; use security: "
                             "sign_and_encrypt (with certificate and private_key), or, on a network you trust, "
                             "set allow_password_without_security: true")
        return self

    @field_validator("trust_dir")
    @classmethod
    def _trust_dir(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\x00" in v):
            raise ValueError("trust_dir must be a folder path (relative to the plant file, or absolute)")
        return v

    @field_validator("server_cert_sha256")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is None:
            return None
        hexdigits = v.strip().replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", hexdigits):
            raise ValueError(f"{_q(v)} is not a SHA-256 fingerprint; write 64 hex digits (colons allowed), as "
                             "'openssl x509 -noout -fingerprint -sha256' prints it")
        return hexdigits

    def trust_dir_path(self) -> Path | None:
        """``trust_dir`` relative to the plant file's folder."""
        return None if self.trust_dir is None else _plant_path(self.trust_dir, self._base_dir)

    @field_validator("endpoint")
    @classmethod
    def _ep(cls, v: str) -> str:
        if not v.startswith("opc.tcp://"):
            raise ValueError(f"{_q(v)} is not an OPC UA endpoint; write it as 'opc.tcp://host:port'")
        return v

    @field_validator("users")
    @classmethod
    def _users(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if not v:
                raise ValueError("users is empty; give name: password pairs, or remove it")
            for name in v:
                if not name.strip():
                    raise ValueError("a user name cannot be empty")
        return v


def _plant_path(value: str, base_dir: Path | None) -> Path:
    path = Path(value)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


class MqttTls(_Model):
    """TLS to the broker: the CA that signed the broker's certificate, and optionally the
    client's certificate and key (mutual TLS); paths relative to the plant file."""

    ca: str
    cert: str | None = None
    key: str | None = None

    @field_validator("ca", "cert", "key")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\x00" in v):
            raise ValueError("a file path (relative to the plant file, or absolute)")
        return v

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give 'cert' and 'key' together (the client's certificate and its private key), "
                             "or neither")
        return self


class MqttBroker(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password: str | None = None
    # or the password from an environment variable or a file (relative to the plant file), read
    # when the collector connects
    password_env: str | None = None
    password_file: str | None = None
    client_id: str | None = None
    # TLS: the broker's certificate must be signed by `ca` (and name `host`); cert/key: mutual TLS
    tls: MqttTls | None = None
    # what goes over this broker: JSON objects on the signals' topics (one message per topic and
    # event, or one per signal), or Sparkplug B (protobuf, spBv1.0/<group_id>/.../<edge_node_id>)
    payload: Literal["json", "sparkplug"] = "json"
    grouping: Literal["per_topic", "per_signal"] = "per_topic"
    group_id: str | None = None
    edge_node_id: str | None = None
    _base_dir: Path | None = PrivateAttr(default=None)

    def resolve_password(self) -> str | None:
        """The password the collector logs in with; :class:`CredentialError` names what is missing."""
        return _resolve_password(self, self._base_dir)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of ``tls`` (None without it): TLS 1.2 or later, the broker's
        certificate verified against ``ca`` and its name against ``host``, the client's
        certificate and key loaded when given. :class:`CredentialError` names a file that
        cannot be read or used."""
        if self.tls is None:
            return None
        ca = _plant_path(self.tls.ca, self._base_dir)
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        except (OSError, ssl.SSLError) as e:
            raise CredentialError(f"cannot use tls.ca {ca}: {getattr(e, 'strerror', None) or e}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls.cert is not None and self.tls.key is not None:
            cert, key = _plant_path(self.tls.cert, self._base_dir), _plant_path(self.tls.key, self._base_dir)
            try:
                ctx.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as e:
                raise CredentialError(f"cannot use tls.cert {cert} with tls.key {key}: "
                                      f"{getattr(e, 'strerror', None) or e}") from None
        return ctx

    @field_validator("group_id", "edge_node_id")
    @classmethod
    def _sparkplug_id(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or any(c in v for c in "/+#")):
            raise ValueError(f"{_q(v)} cannot be a Sparkplug id: it is part of the topic, so it must not be empty "
                             "or contain '/', '+' or '#'")
        return v

    @model_validator(mode="after")
    def _payload_keys(self) -> MqttBroker:
        problem = _password_sources_problem(self)
        if problem:
            raise ValueError(problem)
        if self.payload == "sparkplug":
            missing = [k for k in ("group_id", "edge_node_id") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a Sparkplug B source needs {' and '.join(repr(k) for k in missing)} "
                                 "(topics are spBv1.0/<group_id>/<type>/<edge_node_id>/<machine id>)")
            if "grouping" in self.model_fields_set:
                raise ValueError("'grouping' is for JSON payloads; a Sparkplug B message carries one device's "
                                 "changed metrics (remove grouping)")
        elif self.group_id is not None or self.edge_node_id is not None:
            raise ValueError("'group_id' and 'edge_node_id' are Sparkplug B keys (add payload: sparkplug, or "
                             "remove them)")
        return self


class Source(_Model):
    opcua: OpcUaEndpoint | None = None
    mqtt: MqttBroker | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if (self.opcua is None) == (self.mqtt is None):
            raise ValueError("a source is either 'opcua: {endpoint: ...}' or 'mqtt: {host: ..., port: ...}'")
        return self

    @property
    def kind(self) -> Literal["opcua", "mqtt"]:
        return "opcua" if self.opcua is not None else "mqtt"

    def resolve_password(self) -> str | None:
        conn = self.opcua if self.opcua is not None else self.mqtt
        return conn.resolve_password() if conn is not None else None


class Signal(_Model):
    # OPC UA
    node: str | None = None
    # MQTT
    topic: str | None = None
    field: str | None = None
    time_field: str | None = None
    time_unit: Literal["s", "ms", "us", "ns", "iso"] = "ms"
    # Sparkplug B: the metric name in the machine's device (default: the signal name)
    metric: str | None = None
    # meaning
    counter_bits: Literal[8, 16, 32, 64] | None = None
    retentive: bool = False
    max_step: int = Field(default=1000, ge=1)
    map: dict[int, CanonicalState] | None = None
    unit: str | None = None

    _map_codes = field_validator("map", mode="before")(_distinct_codes)

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(ns=\d+|nsu=[^;]+);[sigb]=.+$", v):
            raise ValueError(f"{_q(v)} is not an OPC UA node id; write 'ns=2;s=Line.Machine.Signal' or "
                             "'nsu=<uri>;s=...'")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        # the collector subscribes to it: a filter the broker refuses kills paho's network thread
        problem = mqtt_topic_filter_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v != v.strip()):
            raise ValueError(f"{_q(v)} is not a Sparkplug metric name; write it without surrounding spaces, "
                             "e.g. 'Counts/Good'")
        return v


class Simulation(_Model):
    """How the bundled simulator behaves for one machine (ignored by everything else)."""

    cycle_cv: float = Field(default=0.08, ge=0, le=1)
    cycle_factor: float = Field(default=1.05, ge=0.9, le=100)  # mean cycle time / ideal cycle time
    slow_cycle_rate: float = Field(default=0.02, ge=0, le=1)
    slow_cycle_factor: float = Field(default=1.5, ge=1, le=100)
    scrap_rate: float = Field(default=0.02, ge=0, le=1)
    mtbf_s: float = Field(default=1800, gt=0, le=MAX_SIM_S)
    mttr_s: float = Field(default=180, gt=0, le=MAX_SIM_S)
    micro_stop_rate_per_h: float = Field(default=4, ge=0, le=3600)
    reasons: list[int] | None = None
    counter_start: int = Field(default=0, ge=0)
    # the line: the buffer after this station (ignored on a line's last station)
    buffer_capacity: int = Field(default=10, ge=1)
    buffer_initial: int | None = Field(default=None, ge=0)  # None: half the capacity, rounded up
    changeover_s: float = Field(default=300, ge=0, le=MAX_SIM_S)
    # the line's product plan (read from a line's first station)
    product_mix: dict[str, Annotated[float, Field(gt=0, le=1e9)]] | None = None
    run_length: float = Field(default=200, gt=0, le=1e9)

    @model_validator(mode="after")
    def _line_settings(self) -> Simulation:
        if self.buffer_initial is not None and self.buffer_initial > self.buffer_capacity:
            raise ValueError(f"buffer_initial ({self.buffer_initial}) is more than buffer_capacity "
                             f"({self.buffer_capacity}); lower it or raise the capacity")
        if self.product_mix is not None and not self.product_mix:
            raise ValueError("product_mix is empty; give products with weights, e.g. {TB-100: 0.6, TB-200: 0.4}")
        return self


class Machine(_Model):
    id: Ident
    name: Name | None = None
    ideal_cycle_s: float | None = Field(default=None, gt=0, le=MAX_CYCLE_S)
    # no accepted sample for this long: the machine is `offline` until data returns (None: never;
    # a machine that reports only on change may be quiet for hours while idle)
    stale_after_s: float | None = Field(default=None, gt=0, le=MAX_CYCLE_S)
    source: str
    output: bool = False
    signals: dict[str, Signal]
    simulation: Simulation = Field(default_factory=Simulation)

    @field_validator("signals")
    @classmethod
    def _signal_names(cls, v: dict[str, Signal]) -> dict[str, Signal]:
        for k in v:
            if not ID_RE.fullmatch(k):
                raise ValueError(f"signal name {_q(k)} must match {ID_PATTERN}")
        return v


class Line(_Model):
    id: Ident
    name: Name | None = None
    target_per_hour: float = Field(default=0, ge=0, le=1e6)
    machines: list[Machine] = Field(min_length=1)

    @property
    def output_machines(self) -> list[Machine]:
        marked = [m for m in self.machines if m.output]
        return marked or [self.machines[-1]]


# ---- alerts -----------------------------------------------------------------------------------

STOP_STATES: tuple[CanonicalState, ...] = ("idle", "down", "changeover", "offline")  # a stop: not running, not planned
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
MAX_ALERT_MINUTES = 7 * 1440.0


class Webhook(_Model):
    """Where alert messages go: an HTTP(S) URL that takes a JSON POST (a Slack incoming webhook,
    Teams, a chat bridge). A webhook URL is a secret (whoever has it can post), so it may come from
    an environment variable (``url_env``) or a file (``url_file``, relative to the plant file)."""

    id: Ident
    url: str | None = None
    url_env: str | None = None
    url_file: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # at most this many messages per minute; more are delayed, never dropped
    max_per_minute: int = Field(default=20, ge=1, le=10_000)
    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_url(self) -> Webhook:
        given = [k for k in ("url", "url_env", "url_file") if getattr(self, k) is not None]
        if len(given) != 1:
            got = f" (got {' and '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of url, url_env and url_file{got}")
        if self.url is not None:
            _url_problem(self.url)
        if self.url_env is not None and not ENV_NAME_RE.fullmatch(self.url_env):
            raise ValueError(f"url_env {_q(self.url_env)} is not an environment variable name (e.g. SLACK_WEBHOOK)")
        if self.url_file is not None and (not self.url_file.strip() or "\x00" in self.url_file):
            raise ValueError("url_file must be a file path (relative to the plant file, or absolute)")
        for name, value in self.headers.items():
            if not HEADER_NAME_RE.fullmatch(name):
                raise ValueError(f"header name {_q(name)} is not an HTTP header name")
            if any(c in value for c in "\r\n\x00"):
                raise ValueError(f"header {_q(name)}: a value cannot hold a line break or NUL")
        return self

    def resolve_url(self) -> str:
        """The URL to post to (``url``, ``url_env`` or ``url_file``); :class:`CredentialError` names
        what is missing or wrong. Never logged: it is a secret."""
        if self.url is not None:
            return self.url
        if self.url_env is not None:
            value = os.environ.get(self.url_env, "").strip()
            if not value:
                raise CredentialError(f"webhook {self.id}: the environment variable {self.url_env} (url_env) is "
                                      "not set or empty")
        else:
            assert self.url_file is not None
            try:
                value = read_secret_file(_plant_path(self.url_file, self._base_dir)).strip()
            except ValueError as e:
                raise CredentialError(f"webhook {self.id}: url_file: {e}") from None
        try:
            _url_problem(value)
        except ValueError as e:
            source = "url_env" if self.url_env is not None else "url_file"
            # the message names the scheme only: the rest of a webhook URL is the secret
            raise CredentialError(f"webhook {self.id}: {source}: {e}") from None
        return value


def _url_problem(url: str) -> None:
    if not re.match(r"^https?://[^/\s?#]+", url) or any(c.isspace() for c in url):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        raise ValueError(f"a webhook URL starts with http:// or https:// and a host, without spaces"
                         f"{f' (got scheme {_q(scheme)})' if scheme and len(scheme) < 20 else ''}")


class DownCondition(_Model):
    """A line or a machine stopped for longer than ``minutes`` of production time."""

    line: Ident | None = None
    machine: Ident | None = None
    minutes: float = Field(ge=0, le=MAX_ALERT_MINUTES)
    # the states that count as down; default: a line's stop (every state but running and planned),
    # a machine's `down` (a breakdown)
    states: list[CanonicalState] | None = None

    @model_validator(mode="after")
    def _subject(self) -> DownCondition:
        if (self.line is None) == (self.machine is None):
            raise ValueError("say what is down: either 'line: <line id>' or 'machine: <machine id>'")
        if self.states is not None:
            if not self.states:
                raise ValueError("states is empty; list the states that count as down, e.g. [down, idle]")
            wrong = [s for s in self.states if s not in STOP_STATES]
            if wrong:
                raise ValueError(f"states: {_q(wrong[0])} is not a stop; use some of {', '.join(STOP_STATES)}")
        return self

    def down_states(self) -> frozenset[str]:
        if self.states is not None:
            return frozenset(self.states)
        return frozenset(STOP_STATES if self.line is not None else ("down",))


class BehindPlanCondition(_Model):
    """At the local times ``at``, the line's good so far is more than ``percent`` % below its
    target so far (the line status's ``expected``)."""

    line: Ident
    percent: float = Field(ge=0, lt=100)
    at: list[str] = Field(min_length=1)

    @field_validator("at")
    @classmethod
    def _times(cls, v: list[str]) -> list[str]:
        for t in v:
            _hhmm(t)
        if len(set(v)) != len(v):
            raise ValueError("a check time is listed twice; list each once")
        return v

    def times(self) -> list[time]:
        return sorted(_hhmm(t) for t in self.at)


class NoDataCondition(_Model):
    """A machine's newest fact (of any kind) is older than ``seconds``."""

    machine: Ident
    seconds: float = Field(gt=0, le=MAX_CYCLE_S)


class AlertRule(_Model):
    id: Ident
    webhooks: list[Ident] | None = None  # default: every webhook
    down: DownCondition | None = None
    behind_plan: BehindPlanCondition | None = None
    no_data: NoDataCondition | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> AlertRule:
        given = [k for k in ("down", "behind_plan", "no_data") if getattr(self, k) is not None]
        if len(given) != 1:
            got = f" (got {' and '.join(given)})" if given else ""
            raise ValueError(f"a rule has exactly one condition: down, behind_plan or no_data{got}; write one "
                             "rule per condition")
        return self

    @property
    def condition(self) -> DownCondition | BehindPlanCondition | NoDataCondition:
        c = self.down or self.behind_plan or self.no_data
        assert c is not None
        return c

    @property
    def kind(self) -> Literal["down", "behind_plan", "no_data"]:
        return "down" if self.down is not None else "behind_plan" if self.behind_plan is not None else "no_data"


class Alerts(_Model):
    """Messages to webhooks when a condition starts and when it ends (``mieruka api`` checks them)."""

    check_period_s: float = Field(default=30, ge=0.1, le=3600)
    webhooks: list[Webhook] = Field(default_factory=list)
    rules: list[AlertRule] = Field(default_factory=list)

    def webhook(self, webhook_id: str) -> Webhook | None:
        return next((w for w in self.webhooks if w.id == webhook_id), None)

    def webhooks_of(self, rule: AlertRule) -> list[Webhook]:
        if rule.webhooks is None:
            return list(self.webhooks)
        return [w for w in self.webhooks if w.id in rule.webhooks]


class Plant(_Model):
    site: Site
    calendar: Calendar = Field(default_factory=Calendar)
    reasons: dict[int, Reason] = Field(default_factory=dict)
    products: dict[str, Product] = Field(default_factory=dict)
    sources: dict[str, Source]
    lines: list[Line] = Field(min_length=1)
    alerts: Alerts = Field(default_factory=Alerts)

    _reason_codes = field_validator("reasons", mode="before")(_distinct_codes)

    # ---- lookups -------------------------------------------------------------------------
    def machines(self) -> Iterator[tuple[Line, Machine]]:
        for line in self.lines:
            for m in line.machines:
                yield line, m

    def line(self, line_id: str) -> Line | None:
        return next((ln for ln in self.lines if ln.id == line_id), None)

    def machine(self, machine_id: str) -> Machine | None:
        return next((m for _, m in self.machines() if m.id == machine_id), None)

    def line_of(self, machine_id: str) -> Line | None:
        return next((ln for ln, m in self.machines() if m.id == machine_id), None)

    def shift(self, shift_id: str) -> Shift | None:
        return next((s for s in self.calendar.shifts if s.id == shift_id), None)

    def shift_name(self, shift_id: str, lang: str) -> str:
        """The shift's name in ``lang`` (its id when it has none, or when the calendar no longer has it)."""
        s = self.shift(shift_id)
        return label(s.name if s is not None else None, lang, shift_id)

    def machines_of_source(self, source_id: str) -> list[tuple[Line, Machine]]:
        return [(ln, m) for ln, m in self.machines() if m.source == source_id]

    def ideal_cycle_s(self, machine: Machine, product: str | None = None) -> float | None:
        if product is not None and product in self.products:
            return self.products[product].ideal_cycle_s
        return machine.ideal_cycle_s


# ---- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    hint: str | None = None

    def render(self, file: str) -> str:
        # every piece that can repeat the file's content is cut again here, should a message miss it
        where = f"{file}: {_short(self.path, 300)}" if self.path else file
        fix = f" (fix: {_short(self.hint, 300)})" if self.hint else ""
        return f"{where}: {_short(self.message, 500)}{fix}"


class PlantFileError(Exception):
    """A plant file that cannot be used; ``str()`` gives one line per problem."""

    def __init__(self, file: str | Path, problems: list[Problem]) -> None:
        self.file = str(file)
        self.problems = problems
        lines = [p.render(self.file) for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"{self.file}: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems")
        super().__init__("\n".join(lines))


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic names union members and tuple slots; they are not part of the file's path
            if part in ("str", "LocalizedName", "function-after[_one(), LocalizedName]"):
                continue
            if part.startswith(("function-", "literal[", "tuple[")):
                continue
            part = _short(part)
            out += f".{part}" if out else part
    return out


_FIELD_HINTS: dict[str, str] = {
    "counter_bits": "use 8, 16, 32 or 64, the width of the PLC register",
    "timezone": "use an IANA name like 'Asia/Tokyo'",
    "days": "use mon, tue, wed, thu, fri, sat, sun",
    "security": "use none, sign or sign_and_encrypt",
    "locale": "use ja or en",
    "category": "use breakdown, changeover, micro_stop, speed, quality, starved, blocked, planned or other",
}


def _problems_from_validation(err: ValidationError, raw: Any) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _loc_to_path(loc)
        msg = str(e["msg"]).removeprefix("Value error, ")
        hint: str | None = None
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            msg = f"unknown key {_q(key)}"
            known = _known_keys(loc[:-1], raw)
            close = difflib.get_close_matches(key, known, n=1) if len(key) < 100 else []
            hint = f"did you mean '{close[0]}'?" if close else (f"allowed keys: {', '.join(known)}" if known else None)
        elif e["type"] == "missing":
            msg = f"'{loc[-1]}' is required"
        else:
            for name, h in _FIELD_HINTS.items():
                if name in [str(p) for p in loc] and "did you mean" not in msg:
                    hint = h
                    break
            if "input" in e and e["type"] not in ("value_error",):
                msg = f"{msg} (got {_short(repr(e['input']))})"
        if (path, msg) in seen:
            continue
        seen.add((path, msg))
        problems.append(Problem(path, msg, hint))
    # for `str | {ja, en}` names pydantic reports both members; keep the more specific one.
    # `parents` holds every path that some problem's path continues with '.': a set, since
    # comparing every problem with every other took 90 s for 20 000 wrong names
    parents = {q.path[:k] for q in problems for k, c in enumerate(q.path) if c == "."}
    return [p for p in problems if not (p.message.startswith("Input should be a valid string")
                                        and p.path in parents)]


def _known_keys(loc: tuple[int | str, ...], raw: Any) -> list[str]:
    """Field names of the model at ``loc`` (walking the schema alongside the raw data)."""
    model: type[BaseModel] | None = Plant
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        finfo = model.model_fields.get(part)
        if finfo is None:
            continue  # a key of a mapping (signal name, source id): the value's model stays
        model = _inner_model(finfo.annotation)
        if model is None and part in ("signals", "sources", "reasons", "products"):
            by_key: dict[str, type[BaseModel]] = {"signals": Signal, "sources": Source, "reasons": Reason,
                                                  "products": Product}
            model = by_key[part]
    return sorted(model.model_fields) if model is not None else []


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _week_intervals(shift: Shift) -> list[tuple[int, int]]:
    s, e = shift.minutes()
    out = []
    for d in dict.fromkeys(shift.days):  # a day listed twice is one day
        base = DAYS.index(d) * 1440
        a, b = base + s, base + e
        if b > 7 * 1440:  # a Sunday night shift runs into Monday
            out.append((a, 7 * 1440))
            out.append((0, b - 7 * 1440))
        else:
            out.append((a, b))
    return out


def _overlapping_shifts(shifts: list[Shift]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of shifts that overlap somewhere in the week, sorted.

    A sweep over the week's intervals, not every pair against every pair: 3 000 shifts in a
    190 KB file took minutes and 1.6 GB that way. It stops after MAX_PROBLEMS_SHOWN pairs, so
    a file of shifts that all overlap costs no more than one with a few."""
    intervals = sorted((a, b, idx) for idx, sh in enumerate(shifts) for a, b in _week_intervals(sh))
    pairs: set[tuple[int, int]] = set()
    active: list[tuple[int, int]] = []  # (end, shift index) of intervals that may still overlap
    for a, b, j in intervals:
        active = [(end, i) for end, i in active if end > a]
        for _, i in active:
            if i != j:  # a shift's own intervals are separate days
                pairs.add((min(i, j), max(i, j)))
        if len(pairs) >= MAX_PROBLEMS_SHOWN:
            break
        active.append((b, j))
    return sorted(pairs)


def _semantic_problems(plant: Plant) -> list[Problem]:
    problems: list[Problem] = []
    # shifts: unique ids, no overlaps, breaks inside the shift
    ids: dict[str, int] = {}
    for i, sh in enumerate(plant.calendar.shifts):
        if sh.id in ids:
            problems.append(Problem(f"calendar.shifts[{i}].id", f"duplicate shift id {_q(sh.id)}",
                                    f"rename it; calendar.shifts[{ids[sh.id]}] already uses it"))
        ids.setdefault(sh.id, i)
        s, e = sh.minutes()
        for j, (a, b) in enumerate(sh.break_minutes()):
            if not (s <= a < b <= e):
                problems.append(Problem(f"calendar.shifts[{i}].breaks[{j}]",
                                        f"break {sh.breaks[j][0]}–{sh.breaks[j][1]} is not inside the shift "
                                        f"{sh.start}–{sh.end}", "move the break inside the shift"))
    shifts = plant.calendar.shifts
    for i, j in _overlapping_shifts(shifts):
        problems.append(Problem(
            f"calendar.shifts[{j}]",
            f"shift {_q(shifts[j].id)} ({shifts[j].start}–{shifts[j].end}) overlaps shift "
            f"{_q(shifts[i].id)} ({shifts[i].start}–{shifts[i].end})",
            "shifts must not overlap; change a start or end time, or the days"))
    # lines and machines
    source_ids = list(plant.sources)
    source_names = (", ".join(_short(s) for s in source_ids[:20]) + (", ..." if len(source_ids) > 20 else "")
                    or "(none)")
    line_ids: dict[str, int] = {}
    machine_ids: dict[str, str] = {}
    for li, line in enumerate(plant.lines):
        if line.id in line_ids:
            problems.append(Problem(f"lines[{li}].id", f"duplicate line id {_q(line.id)}",
                                    f"line ids are unique; lines[{line_ids[line.id]}] already uses it"))
        line_ids.setdefault(line.id, li)
        for mi, m in enumerate(line.machines):
            p = f"lines[{li}].machines[{mi}]"
            if m.id in machine_ids:
                problems.append(Problem(f"{p}.id", f"duplicate machine id {_q(m.id)}",
                                        f"machine ids are unique in the whole plant; {machine_ids[m.id]} "
                                        "already uses it"))
            machine_ids.setdefault(m.id, p)
            src = plant.sources.get(m.source)
            if src is None:
                # a suggestion compares with every source: only for what will be shown, short names
                # and a plant-sized list
                suggest = len(problems) < MAX_PROBLEMS_SHOWN and len(m.source) < 100 and len(source_ids) <= 1000
                close = difflib.get_close_matches(m.source, source_ids, n=1) if suggest else []
                hint = (f"did you mean '{close[0]}'?" if close else
                        f"declare it under 'sources:' or use one of: {source_names}")
                problems.append(Problem(f"{p}.source", f"unknown source {_q(m.source)}", hint))
            for name, sig in m.signals.items():
                sp = f"{p}.signals.{name}"
                problems.extend(_signal_problems(plant, sp, name, sig, src))
    problems.extend(_alert_problems(plant, line_ids, machine_ids))
    return problems


def _alert_problems(plant: Plant, line_ids: dict[str, int], machine_ids: dict[str, str]) -> list[Problem]:
    """Unique webhook and rule ids; rules name webhooks, lines and machines that exist."""
    problems: list[Problem] = []
    alerts = plant.alerts
    hooks: dict[str, int] = {}
    for i, w in enumerate(alerts.webhooks):
        if w.id in hooks:
            problems.append(Problem(f"alerts.webhooks[{i}].id", f"duplicate webhook id {_q(w.id)}",
                                    f"rename it; alerts.webhooks[{hooks[w.id]}] already uses it"))
        hooks.setdefault(w.id, i)
    if alerts.rules and not alerts.webhooks:
        problems.append(Problem("alerts.rules", "there are rules but no webhook to send their messages to",
                                "add alerts.webhooks: [{id: chat, url_env: SLACK_WEBHOOK_URL}]"))
    rules: dict[str, int] = {}
    known_hooks = ", ".join(hooks) or "(none)"
    for i, rule in enumerate(alerts.rules):
        p = f"alerts.rules[{i}]"
        if rule.id in rules:
            problems.append(Problem(f"{p}.id", f"duplicate rule id {_q(rule.id)}",
                                    f"rename it; alerts.rules[{rules[rule.id]}] already uses it"))
        rules.setdefault(rule.id, i)
        for j, h in enumerate(rule.webhooks or []):
            if h not in hooks:
                close = difflib.get_close_matches(h, list(hooks), n=1)
                problems.append(Problem(f"{p}.webhooks[{j}]", f"unknown webhook {_q(h)}",
                                        f"did you mean '{close[0]}'?" if close else f"use one of: {known_hooks}"))
        c = rule.condition
        where = f"{p}.{rule.kind}"
        line_id = getattr(c, "line", None)
        machine_id = getattr(c, "machine", None)
        if line_id is not None and line_id not in line_ids:
            close = difflib.get_close_matches(line_id, list(line_ids), n=1)
            problems.append(Problem(f"{where}.line", f"unknown line {_q(line_id)}",
                                    f"did you mean '{close[0]}'?" if close else "use a line id from 'lines:'"))
        if machine_id is not None and machine_id not in machine_ids:
            close = difflib.get_close_matches(machine_id, list(machine_ids), n=1)
            problems.append(Problem(f"{where}.machine", f"unknown machine {_q(machine_id)}",
                                    f"did you mean '{close[0]}'?" if close else "use a machine id from 'lines:'"))
        if isinstance(c, BehindPlanCondition) and line_id in line_ids:
            line = plant.lines[line_ids[line_id]]
            if line.target_per_hour <= 0:
                problems.append(Problem(f"{where}.line", f"line {_q(line_id)} has no target_per_hour, so it has "
                                        "no plan to be behind", "set target_per_hour on the line"))
    return problems


def _signal_problems(plant: Plant, sp: str, name: str, sig: Signal, src: Source | None) -> list[Problem]:
    out: list[Problem] = []
    if src is not None and src.kind == "opcua" and not sig.node:
        out.append(Problem(sp, "an OPC UA signal needs 'node'", "add node: \"ns=2;s=...\""))
    sparkplug = src is not None and src.mqtt is not None and src.mqtt.payload == "sparkplug"
    if sig.metric is not None and not sparkplug:
        out.append(Problem(f"{sp}.metric", "'metric' names a Sparkplug B metric, but this signal's source is not "
                           "Sparkplug B", "remove metric, or set payload: sparkplug on the source"))
    if src is not None and src.kind == "mqtt" and not sparkplug:
        if not sig.topic:
            out.append(Problem(sp, "an MQTT signal needs 'topic'", "add topic: \"site/line/machine/...\""))
        if not sig.field:
            out.append(Problem(sp, "an MQTT signal needs 'field' (its key in the JSON payload)",
                               "add field: value"))
    if name in COUNTER_SIGNALS:
        if sig.counter_bits is None:
            out.append(Problem(f"{sp}.counter_bits", f"counter {_q(name)} needs 'counter_bits'",
                               "use 16 or 32, the width of the PLC register"))
    elif sig.counter_bits is not None:
        out.append(Problem(f"{sp}.counter_bits", f"{_q(name)} is not a counter (good, scrap, total)",
                           "remove counter_bits, or rename the signal"))
    if name == STATE_SIGNAL and not sig.map:
        out.append(Problem(f"{sp}.map", "the state signal needs 'map' from raw codes to states",
                           "add map: {1: running, 2: idle, 3: down}"))
    if name != STATE_SIGNAL and sig.map:
        out.append(Problem(f"{sp}.map", f"only the 'state' signal has a map, not {_q(name)}", "remove map"))
    if name in (REASON_SIGNAL, PRODUCT_SIGNAL) and sig.unit:
        out.append(Problem(f"{sp}.unit", f"{_q(name)} has no unit", "remove unit"))
    return out


def parse_plant(raw: Any, file: str | Path = "<plant>") -> Plant:
    """Validate already-loaded YAML data; raises :class:`PlantFileError`."""
    if not isinstance(raw, dict):
        raise PlantFileError(file, [Problem("", "the plant file must be a mapping with 'site', 'sources' "
                                             "and 'lines'", "see deploy/plants/demo.yaml")])
    try:
        plant = Plant.model_validate(raw)
    except ValidationError as err:
        raise PlantFileError(file, _problems_from_validation(err, raw)) from None
    problems = _semantic_problems(plant)
    if problems:
        raise PlantFileError(file, problems)
    return plant


def load_plant(path: str | Path) -> Plant:
    """Read and validate a plant file; raises :class:`PlantFileError` naming the file.

    Whatever the file holds, this ends in a :class:`Plant` or a :class:`PlantFileError` with
    bounded messages, in bounded time and memory: the file's size, the YAML nesting depth are
    capped, aliases and duplicate keys are refused, and only plain data (safe loader) is built."""
    p = Path(path)
    text = _read_text(p)
    try:
        _check_events(text)
        raw = yaml.load(text, Loader=_PlantLoader)  # a SafeLoader subclass: plain data only
    except _PlantYamlError as e:
        raise PlantFileError(p, [Problem(_where(e.problem_mark), e.problem or "YAML error", e.hint)]) from None
    except yaml.reader.ReaderError as e:  # _read_text looked for these already
        raise PlantFileError(p, [Problem("", f"YAML error: {_short(str(e))}")]) from None
    except yaml.MarkedYAMLError as e:
        raise PlantFileError(p, [Problem(_where(e.problem_mark), f"YAML syntax error: {_short(e.problem or '')}",
                                         "check indentation and quoting there")]) from None
    except yaml.YAMLError as e:
        raise PlantFileError(p, [Problem("", f"YAML error: {_short(str(e))}")]) from None
    plant = parse_plant(raw, p)
    _set_base_dir(plant, p.parent)
    return plant


def _read_text(p: Path) -> str:
    try:
        with p.open("rb") as f:
            data = f.read(MAX_PLANT_BYTES + 1)
    except OSError as e:
        raise PlantFileError(p, [Problem("", f"cannot read the file: {e.strerror or e}", "check the path")]) from None
    if len(data) > MAX_PLANT_BYTES:
        raise PlantFileError(p, [Problem("", f"the file is larger than {MAX_PLANT_BYTES // (1 << 20)} MiB; a plant "
                                         "file is far smaller", "check that this is the plant file")])
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark some Windows editors write is fine
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = len(data[data.rfind(b"\n", 0, e.start) + 1:e.start].decode("utf-8", "replace")) + 1  # characters
        raise PlantFileError(p, [Problem(f"line {line}, column {col}",
                                         f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})",
                                         "save it as UTF-8")]) from None
    nul = text.find("\x00")
    if nul >= 0:
        line, col = _line_col(text, nul)
        raise PlantFileError(p, [Problem(f"line {line}, column {col}", "the file contains a NUL byte; it is not a "
                                         "text file", "check that this is the plant file, saved as UTF-8")])
    # YAML's own check reports a byte offset under libyaml: find the character here instead
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad is not None:
        line, col = _line_col(text, bad.start())
        raise PlantFileError(p, [Problem(f"line {line}, column {col}",
                                         f"character U+{ord(bad.group()[0]):04X} is not allowed in a YAML file",
                                         "remove it")])
    return text


def _line_col(text: str, index: int) -> tuple[int, int]:
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown line"


class _PlantYamlError(yaml.MarkedYAMLError):
    """Valid YAML that a plant file must not hold (alias, duplicate key, too deep, ...), with a fix."""

    def __init__(self, problem: str, mark: Any, hint: str) -> None:  # Mark: yaml's or libyaml's
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


# libyaml when it is there: the pure-Python parser needs about 5 s and 700 MB for 2 MB of YAML
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_events(text: str) -> None:
    """Walk the YAML events (a flat stream: constant memory, no recursion) before anything is
    built: aliases, nesting depth and the number of nodes decide whether building is safe."""
    depth = 0
    for n, event in enumerate(yaml.parse(text, Loader=_BaseLoader)):
        if n > MAX_YAML_EVENTS:
            raise _PlantYamlError(f"more than {MAX_YAML_EVENTS} YAML nodes", event.start_mark,
                                  "a plant file of 20 000 signals has 170 000; check that this is the plant file")
        if isinstance(event, yaml.AliasEvent):
            # an alias makes a small file expand to an unbounded one ("billion laughs"), and a
            # plant file has nothing that needs one
            raise _PlantYamlError(f"YAML alias *{_short(event.anchor or '')} is not allowed in a plant file",
                                  event.start_mark, "write the value out instead of referring to an anchor")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                # the composer that builds nodes recurses per level
                raise _PlantYamlError(f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark,
                                      "a plant file needs fewer than 10 levels; check the brackets and indentation")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


class _PlantLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader (plain data only), refusing duplicate keys and non-finite numbers and
    turning a value it cannot build (a date 2026-13-45) into a marked error. Run it only on text
    :func:`_check_events` accepted."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as e:  # e.g. a date 2026-13-45, a 5000-digit integer
            raise _PlantYamlError(f"cannot read this value: {_short(str(e))}", node.start_mark,
                                  "correct or quote it") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.get(key)
            except TypeError:
                continue  # unhashable: the base class says so, with its place
            if earlier is not None:
                raise _PlantYamlError(
                    f"duplicate key {_short(str(key))!r} (line {key_node.start_mark.line + 1}; first at line "
                    f"{earlier.start_mark.line + 1})", key_node.start_mark,
                    "a key may appear once in a mapping; remove or merge one of them")
            first[key] = key_node
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value: float = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _PlantYamlError(f"{_short(str(node.value))} is not a finite number", node.start_mark,
                                  "write a finite number (or quote it if it is text)")
        return value


_PlantLoader.add_constructor("tag:yaml.org,2002:float", _PlantLoader.construct_yaml_float)


def _set_base_dir(plant: Plant, base: Path) -> None:
    """Relative ``password_file`` and ``url_file`` paths are relative to the plant file's folder."""
    for src in plant.sources.values():
        conn = src.opcua if src.opcua is not None else src.mqtt
        if conn is not None:
            conn._base_dir = base
    for hook in plant.alerts.webhooks:
        hook._base_dir = base


def dump_plant(plant: Plant) -> str:
    """YAML text of a plant (used to write generated or shifted plant files)."""
    data = plant.model_dump(mode="json", exclude_defaults=True)
    data["site"] = plant.site.model_dump(mode="json")
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
