"""The peer for the end-to-end benchmark: Postfix + the OpenDKIM milter (RSA-2048) into smtp-sink.

Run (as root: Postfix starts as root and drops to its ``postfix`` user)::

    .venv/bin/python -m loadtests.postfix_peer [--messages N] [--sessions S]
        [--milter unix|inet] [--json]

Needs ``postfix`` (``postconf``, ``smtp-sink``, ``smtp-source``) and ``opendkim``
(``apt-get install postfix opendkim``).

What is measured: the design names Postfix with the OpenDKIM milter relaying into
``smtp-sink`` as the mail server Sluice has to beat, so the end-to-end figure is
printed as a ratio to it, measured in the same run. ``measure()`` sends N copies of
the fixture cart reminder (``harness.fixture_message()``, 13 KB, as Sluice builds it
before DKIM) with ``smtp-source -s 20 -d -N`` (20 sessions, each reused; numbered
recipients, as Sluice's are distinct) into a private Postfix, which has each message
signed by OpenDKIM (RSA-2048, relaxed/relaxed, the headers ``mta.dkim`` signs and
oversigns), queues it (fsync, as Postfix always does) and relays it to ``smtp-sink``
on loopback. The figure is N divided by the time from the first submission to the
sinks' count reaching N; 20 warm-up messages go first, so that Postfix's processes
are running when the clock starts.

Every 100th message (recipients ``100user0@...``, ``200user0@...``) is routed by a
``transport_maps`` entry to a second ``smtp-sink`` that keeps what it receives (``-d``),
and each of those is verified with dkimpy against the public key (fed directly, no DNS):
the figure is the signing peer's. Only a sample is kept because keeping costs the sink
0.4-0.8 ms of CPU a message against 0.09 ms without, on a machine where the whole
peer spends ~5 ms. A message OpenDKIM does not answer for is refused
(``milter_default_action = tempfail``) and fails the run.

How it is set up, all in one temp directory, nothing written to /etc, no system
service (``postfix_peer()``):

- OpenDKIM: ``opendkim -f -x <dir>/opendkim.conf`` in the foreground, signing mode
  for ``shop.example.com`` with an RSA-2048 key made by ``mta.dkimkeys.KeyStore``
  (or one passed in), its milter on a unix socket (Debian's default) that only root
  and the postfix group reach. ``--milter inet`` puts it on a loopback TCP port
  instead, the other common setup, which is much slower here (below).
- Postfix: its own ``config_directory`` (the system's master.cf with every inet
  listener replaced by one on a free loopback port and chroot off; a fresh main.cf
  set with ``postconf -c``), ``queue_directory``, ``data_directory`` and log file,
  started with ``postfix -c DIR start``. ``relayhost = [127.0.0.1]:SINK``, no DNS
  (``smtp_dns_support_level = disabled``, ``smtp_host_lookup = native``,
  ``smtpd_peername_lookup = no``), ``initial_destination_concurrency = 20`` and
  ``default_destination_concurrency_limit = 50`` so the relay does not ramp up slowly,
  connections to the sink cached.
- The sinks: Postfix's ``smtp-sink``, the program ``bench_e2e`` relays into, with
  ``-c``: a running message count on stdout, read live (it costs the sink nothing
  measurable).

Figures on this machine (2 cores, shared with other work), 2,000 messages, 20 sessions:

- unix socket (the default): 262-356 msg/s over five runs (304, 356, 263, 262, 305;
  other work ran beside them). CPU-bound: the machine's two cores are busy; per
  message Postfix's processes take 2.5-2.8 ms of CPU, OpenDKIM 1.8 ms (half of it in
  libcrypto, where ``perf`` shows OpenSSL 3's key decoder: libopendkim loads the PEM
  key for each signature), the sinks and smtp-source 0.3 ms.
- ``--milter inet``: 205 and 207 msg/s, the design's "~210". Latency-bound, not CPU:
  strace of OpenDKIM shows each message waiting twice ~40 ms on the milter's TCP
  connection, each time after a packet Postfix sends that gets no reply: Linux's 40 ms
  delayed ACK meeting Nagle's algorithm. So a session relays ~10 messages/s and 20
  sessions ~210/s (5 sessions: 55 msg/s; 5 over the unix socket: 309 msg/s).
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dkim

from loadtests.counting_sink import CountingSink, SinkFailed, Tally, received_message
from loadtests.harness import fixture_message, free_port, print_result
from mta.dkim import OVERSIGNED, SIGNED_WHEN_PRESENT
from mta.dkimkeys import DkimKey, KeyStore

DOMAIN = "shop.example.com"  # the fixture's From domain
SELECTOR = "peer"
SENDER = "bounce@shop.example.com"
RECIPIENT = "user0@inbox.example.org"
SESSIONS = 20
WARMUP = 20
# smtp-source -N numbers the recipients (1user0@..., 2user0@...); Postfix routes every
# 100th to a second sink that keeps what it receives, for the DKIM check. Keeping costs
# smtp-sink 0.4-0.8 ms of CPU a message (0.09 ms without), too much to do for all.
SAMPLE_EVERY = 100
Milter = Literal["unix", "inet"]  # how Postfix reaches OpenDKIM
DEFAULT_MILTER: Milter = "unix"  # Debian's setup, and the faster one here (module docstring)
TOOLS = ("postfix", "postconf", "opendkim", "smtp-sink", "smtp-source")
# The headers mta.dkim signs and oversigns, so both signers do the same work. OpenDKIM's
# own default list leaves out Message-ID and the MIME headers, and oversigning a header
# that is not also in SignHeaders gives a signature that does not verify.
SIGN_HEADERS = ",".join(h.decode() for h in OVERSIGNED + SIGNED_WHEN_PRESENT)
OVERSIGN_HEADERS = ",".join(h.decode() for h in OVERSIGNED)
# Numbers that end in as many zeros as SAMPLE_EVERY has (a Postfix regexp: table).
_SAMPLED = f"/^[0-9]*{'0' * (len(str(SAMPLE_EVERY)) - 1)}{re.escape(RECIPIENT)}$/"


class PeerFailed(RuntimeError):
    """The peer could not start or did not relay every message; the text says why."""


@dataclass(frozen=True)
class Peer:
    """A running Postfix + OpenDKIM: submit to ``port``; it relays to the sink."""

    port: int
    root: Path
    key: DkimKey
    milter: Milter
    master_pid: int
    opendkim_pid: int

    def log(self, lines: int = 30) -> str:
        """The end of Postfix's log and OpenDKIM's output, for error messages."""
        parts = []
        for name in ("maillog", "opendkim.log"):
            with contextlib.suppress(OSError):
                text = (self.root / name).read_text(errors="replace").splitlines()
                parts.append(f"--- {name}\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


# --- OpenDKIM ----------------------------------------------------------------------------


@contextlib.contextmanager
def _opendkim(root: Path, key: DkimKey, milter: Milter) -> Iterator[tuple[str, int]]:
    """OpenDKIM in the foreground, signing for the key's domain; yields (the address for
    Postfix's ``smtpd_milters``, pid)."""
    address: int | Path
    if milter == "unix":
        # Only root and Postfix's group reach the socket: the directory is root:postfix
        # 2750, so the socket OpenDKIM makes there (umask 007) is in the postfix group.
        sockets = root / "opendkim"
        sockets.mkdir()
        os.chown(sockets, 0, grp.getgrnam("postfix").gr_gid)
        sockets.chmod(0o2750)
        address = sockets / "milter.sock"
        listen, postfix_side = f"local:{address}", f"unix:{address}"
    else:
        address = free_port()
        listen, postfix_side = f"inet:{address}@127.0.0.1", f"inet:127.0.0.1:{address}"
    conf = root / "opendkim.conf"
    conf.write_text(
        "\n".join(
            [
                "Mode s",
                f"Domain {key.domain}",
                f"Selector {key.selector}",
                f"KeyFile {key.path}",
                # The key is 0600 in a 0700 directory, but OpenDKIM also refuses any
                # world-writable directory above it, and /tmp is one (sticky or not).
                "RequireSafeKeys no",
                f"Socket {listen}",
                "UMask 007",
                "Canonicalization relaxed/relaxed",
                "SignatureAlgorithm rsa-sha256",
                f"SignHeaders {SIGN_HEADERS}",
                f"OversignHeaders {OVERSIGN_HEADERS}",
                "Syslog no",
                "",
            ]
        )
    )
    with open(root / "opendkim.log", "wb") as log:
        process = subprocess.Popen(
            ["opendkim", "-f", "-x", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_listening(address, process, "opendkim", root / "opendkim.log")
        yield postfix_side, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_listening(
    address: int | Path,
    process: subprocess.Popen[bytes] | None,
    name: str,
    log: Path,
    timeout: float = 20,
) -> None:
    """Until ``address`` (a loopback TCP port or a unix socket) takes a connection; with
    no ``process`` (Postfix, whose master owns the socket), until smtpd says 220."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PeerFailed(f"{name} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if isinstance(address, Path):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(address))
                return
            with socket.create_connection(("127.0.0.1", address), timeout=5) as sock:
                if process is not None or sock.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise PeerFailed(f"{name} did not listen on {address} in {timeout:.0f}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- Postfix -----------------------------------------------------------------------------


def _postconf(etc: Path, *args: str) -> str:
    done = subprocess.run(
        ["postconf", "-c", str(etc), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise PeerFailed(f"postconf {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _main_cf(root: Path, sink_port: int, milter: str) -> dict[str, str]:
    relay = f"[127.0.0.1]:{sink_port}"
    return {
        "transport_maps": f"regexp:{root / 'etc' / 'sample'}",
        "compatibility_level": "3.6",
        "meta_directory": str(root / "etc"),
        "queue_directory": str(root / "queue"),
        "data_directory": str(root / "data"),
        "maillog_file": str(root / "maillog"),
        "maillog_file_prefixes": str(root),
        "myhostname": "peer.sluice.test",
        "mydestination": "",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": relay,
        "smtp_dns_support_level": "disabled",
        "smtp_host_lookup": "native",
        "smtpd_peername_lookup": "no",
        "smtpd_milters": milter,
        "milter_default_action": "tempfail",
        "initial_destination_concurrency": str(SESSIONS),
        "default_destination_concurrency_limit": "50",
        "smtp_connection_cache_destinations": relay,
    }


def _configure_postfix(root: Path, port: int, sinks: tuple[int, int], milter: str) -> Path:
    """A config directory of its own: the system's master.cf, a fresh main.cf."""
    etc = root / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("")
    (etc / "sample").write_text(f"{_SAMPLED} smtp:[127.0.0.1]:{sinks[1]}\n")
    system = Path(_postconf(etc, "-d", "-h", "config_directory").strip())
    shutil.copy(system / "master.cf", etc / "master.cf")
    # meta_directory (postfix-files, read by `postfix start`) copied too: nothing under /etc
    # is even a candidate for writing.
    meta = Path(_postconf(etc, "-d", "-h", "meta_directory").strip())
    for name in ("postfix-files", "dynamicmaps.cf", "postfix-files.d", "dynamicmaps.cf.d"):
        source = meta / name
        if source.is_dir():
            shutil.copytree(source, etc / name)
        elif source.exists():
            shutil.copy(source, etc / name)
    settings = _main_cf(root, sinks[0], milter)
    _postconf(etc, "-e", *(f"{name}={value}" for name, value in settings.items()))
    _postconf(etc, "-F", "*/*/chroot = n")  # no copies of /etc files in a chroot jail
    for line in _postconf(etc, "-M").splitlines():
        name, kind = line.split()[:2]
        if kind == "inet":
            _postconf(etc, "-MX", f"{name}/inet")
    listen = f"127.0.0.1:{port}"
    _postconf(etc, "-M", f"{listen}/inet = {listen} inet n - n - - smtpd")
    return etc


@contextlib.contextmanager
def _postfix(root: Path, sinks: tuple[int, int], milter: str) -> Iterator[tuple[int, int]]:
    """Postfix from its own config directory; yields (SMTP port, master pid)."""
    port = free_port()
    etc = _configure_postfix(root, port, sinks, milter)
    try:
        (root / "queue").mkdir(mode=0o755)  # `postfix start` makes what is inside
        # `postfix` logs to the maillog file here (its stderr is not a terminal).
        started = subprocess.run(["postfix", "-c", str(etc), "start"], capture_output=True)
        if started.returncode != 0:
            raise PeerFailed(f"postfix start failed:\n{_tail(root / 'maillog')}")
        _wait_until_listening(port, None, "postfix", root / "maillog")
        master = int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
        yield port, master
    finally:
        # Waits up to 5 s for the master to exit, then kills its process group.
        subprocess.run(["postfix", "-c", str(etc), "stop"], capture_output=True, check=False)


@contextlib.contextmanager
def postfix_peer(
    sink_port: int, sample_port: int, *, key: DkimKey | None = None, milter: Milter = DEFAULT_MILTER
) -> Iterator[Peer]:
    """Postfix + OpenDKIM relaying into ``[127.0.0.1]:sink_port``, in a private temp dir.

    Recipients numbered by ``smtp-source -N`` with a number ending in 00 go to
    ``sample_port`` instead. ``key``: the RSA key to sign with (e.g. the one Sluice signs
    with in the same run); by default a new RSA-2048 key for ``shop.example.com``. Both
    daemons are stopped and the directory removed on exit, also when starting fails half
    way.
    """
    if os.geteuid() != 0:
        raise PeerFailed("Postfix starts as root: run the peer as root")
    if key is not None and key.algorithm != "rsa":
        raise PeerFailed(f"the peer signs with RSA; {key.record_name} is {key.algorithm}")
    root = Path(tempfile.mkdtemp(prefix="sluice-postfix-peer-"))
    root.chmod(0o755)  # Postfix's daemons run as `postfix` and must reach the queue
    try:
        if key is None:
            key = KeyStore(root / "keys").generate(DOMAIN, SELECTOR, "rsa", 2048)
        with (
            _opendkim(root, key, milter) as (milter_address, opendkim_pid),
            _postfix(root, (sink_port, sample_port), milter_address) as (port, master_pid),
        ):
            yield Peer(port, root, key, milter, master_pid, opendkim_pid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def verify(dumps: list[Path], key: DkimKey) -> int:
    """DKIM-verify the dumped messages against ``key``; how many pass."""
    record = key.txt_value().encode("ascii")
    name = f"{key.record_name}.".encode("ascii")

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return record if qname.rstrip(b".") + b"." == name else None

    return sum(
        bool(dkim.verify(received_message(path.read_bytes()), dnsfunc=lookup)) for path in dumps
    )


# --- the DKIM check, sending and measuring ---------------------------------------------------------------


def smtp_source(port: int, messages: int, sessions: int, message_file: Path) -> None:
    """``smtp-source`` sends ``messages`` copies of the file over ``sessions`` sessions,
    recipients numbered from 1 (``1user0@...``, ``2user0@...``)."""
    done = subprocess.run(
        [
            "smtp-source",
            "-s",
            str(sessions),
            "-d",
            "-N",
            "-m",
            str(messages),
            "-F",
            str(message_file),
            "-f",
            SENDER,
            "-t",
            RECIPIENT,
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PeerFailed(f"smtp-source failed: {done.stderr.strip() or done.stdout.strip()}")


def _cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a process, with its reaped children's if ``children``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _postfix_cpu(master: int) -> float:
    """The master and every process it started, live or already reaped."""
    total = _cpu_seconds(master, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(stat[1]) == master:
                    total += _cpu_seconds(int(entry.name), children=True)
    return total


def _machine_jiffies() -> tuple[int, int]:
    """(busy, all) CPU time of the whole machine so far, in jiffies (other users too)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def versions() -> dict[str, str]:
    postfix = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    opendkim = subprocess.run(["opendkim", "-V"], capture_output=True, text=True, check=False)
    first = opendkim.stdout.splitlines()[0] if opendkim.stdout else ""
    return {"postfix": postfix, "opendkim": first.rpartition(" v")[2] or first}


def relay_rate(
    peer: Peer, sinks: list[CountingSink], tally: Tally, messages: int, sessions: int = SESSIONS
) -> dict[str, Any]:
    """Send ``messages`` fixtures into the peer; figures up to the sinks' last one."""
    message_file = peer.root / "fixture.eml"
    # smtp-source appends CRLF to each line of the file (and dot-stuffs).
    message_file.write_bytes(fixture_message(0).replace(b"\r\n", b"\n"))
    sample_sink = sinks[1]
    try:
        smtp_source(peer.port, WARMUP, min(sessions, WARMUP), message_file)
        tally.wait_for(WARMUP, 60, sinks)
        warmup_dumps = set(sample_sink.dumps())
        target = tally.total + messages
        cpu_before, machine_before = _cpu_by_process(peer, sinks), _machine_jiffies()
        started = time.perf_counter()
        smtp_source(peer.port, messages, sessions, message_file)
        submitted = time.perf_counter()
        finished = tally.wait_for(target, 60 + messages / 20, sinks)
        cpu_after, machine_after = _cpu_by_process(peer, sinks), _machine_jiffies()
    except (PeerFailed, SinkFailed) as exc:
        raise PeerFailed(f"{exc}\n{peer.log()}") from exc
    seconds = finished - started
    busy = machine_after[0] - machine_before[0]
    elapsed = machine_after[1] - machine_before[1]
    sample = [path for path in sample_sink.dumps() if path not in warmup_dumps]
    verified = verify(sample, peer.key)
    if not sample or verified < len(sample):
        raise PeerFailed(f"{verified} of {len(sample)} sampled messages verify")
    return {
        "messages": messages,
        "sessions": sessions,
        "milter_socket": peer.milter,
        "seconds": round(seconds, 2),
        "submitted_per_s": round(messages / (submitted - started)),
        "relayed_per_s": round(messages / seconds),
        "dkim_verified": f"{verified}/{len(sample)}",
        "cpu_ms_per_message": {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / messages, 2)
            for name in cpu_before
        },
        "machine_busy_cores": round(busy / elapsed * (os.cpu_count() or 1), 2),
    }


def _cpu_by_process(peer: Peer, sinks: list[CountingSink]) -> dict[str, float]:
    """CPU seconds so far of each side; the reaped children of this process are the
    ``smtp-source`` runs."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "postfix": _postfix_cpu(peer.master_pid),
        "opendkim": _cpu_seconds(peer.opendkim_pid),
        "smtp_sink": sum(_cpu_seconds(sink.process.pid) for sink in sinks),
        "smtp_source": reaped.ru_utime + reaped.ru_stime,
    }


def measure(
    messages: int,
    *,
    sessions: int = SESSIONS,
    key: DkimKey | None = None,
    milter: Milter = DEFAULT_MILTER,
) -> dict[str, Any]:
    """The whole peer measurement: its sinks, Postfix + OpenDKIM, N messages."""
    if messages < SAMPLE_EVERY:
        raise PeerFailed(f"send at least {SAMPLE_EVERY}: every {SAMPLE_EVERY}th one is checked")
    tally = Tally()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-peer-")))
        tmp.chmod(0o755)
        sinks = []
        for dump_dir in (None, tmp / "sample"):
            sinks.append(CountingSink(free_port(), tally, dump_dir))
            stack.callback(sinks[-1].close)
        peer = stack.enter_context(
            postfix_peer(sinks[0].port, sinks[1].port, key=key, milter=milter)
        )
        result = relay_rate(peer, sinks, tally, messages, sessions)
    return {**versions(), "message_bytes": len(fixture_message(0)), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument(
        "--milter",
        choices=("unix", "inet"),
        default=DEFAULT_MILTER,
        help="OpenDKIM's socket (default %(default)s; over loopback TCP each message waits ~80 ms "
        "for delayed ACKs, which caps 20 sessions near 210 msg/s)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"needs {', '.join(missing)}: apt-get install postfix opendkim", file=sys.stderr)
        return 2
    try:
        result = measure(args.messages, sessions=args.sessions, milter=args.milter)
    except PeerFailed as exc:
        print(f"postfix_peer: {exc}", file=sys.stderr)
        return 1
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
