# syntax=docker/dockerfile:1
# The edgewatch service image: one image for every command (worker, simulate,
# topics create, config check, ...). ENTRYPOINT is `edgewatch`; the default
# command runs the stream worker on the sample plant in /etc/edgewatch.
#
#   docker build -t edgewatch:0.1.0 .
#   docker run --rm edgewatch:0.1.0 --help
#   docker compose up --build            (Kafka + topics + simulator + worker; see docker-compose.yml)
#
# Needs BuildKit (the default builder since Docker 23): the health check script
# below is written with a heredoc.

# ----------------------------------------------------------------------------- build
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# The pinned set, from the single source requirements.lock, less torch and the
# CUDA stack it pulls (torch, triton, nvidia-*, cuda-*: several GB). torch is the
# optional extra `torch` (only the LSTM autoencoder needs it); an image that
# wants it adds `pip install torch==<pin>` on top of this one.
COPY requirements.lock ./
RUN grep -Ev '^(torch|triton|nvidia-|cuda-)' requirements.lock > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The project itself; its dependencies are already there at the locked versions
# (--no-deps), and `pip check` fails the build if the lock does not satisfy a
# pin of pyproject.toml. setuptools comes from the lock too (--no-build-isolation).
COPY pyproject.toml README.md* ./
COPY edgewatch ./edgewatch
COPY stream ./stream
COPY detectors ./detectors
COPY connectors ./connectors
RUN pip install --no-deps --no-build-isolation . \
 && pip check

# ----------------------------------------------------------------------------- runtime
FROM python:3.11-slim

# EDGEWATCH_CONFIG: the default of --config (the CLI's built-in default points
# into the source tree, which an installed package does not have).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGEWATCH_CONFIG=/etc/edgewatch/plant.yaml \
    EDGEWATCH_WORKER__DATA_DIR=/var/lib/edgewatch

RUN groupadd --system --gid 10001 edgewatch \
 && useradd --system --uid 10001 --gid edgewatch --home-dir /var/lib/edgewatch --shell /usr/sbin/nologin edgewatch \
 && mkdir -p /var/lib/edgewatch \
 && chown edgewatch:edgewatch /var/lib/edgewatch

COPY --from=build /opt/venv /opt/venv
COPY config/ /etc/edgewatch/

# Health of a long-running edgewatch container (the worker; the simulator too).
# "Is the process alive?" would be no check at all: the edgewatch process is
# PID 1, and when it exits the container stops (and compose restarts it), so a
# check that runs always finds it alive. What does go wrong while it runs is
# losing Kafka (broker down, network cut, stuck reconnecting). So: healthy when
# PID 1 holds an ESTABLISHED TCP connection to a port of the Kafka bootstrap
# servers of its own configuration (its --config file with the EDGEWATCH_*
# overrides of its own environment). `edgewatch worker` runs its two roles
# (rules, analytics) as child processes of PID 1: then each child must hold such
# a connection, since one role cut off from Kafka is half a worker. Not covered: a worker stuck with its
# connections open (there is no progress metric to read until the metrics issue).
COPY --chmod=0755 <<'EOF' /usr/local/bin/edgewatch-healthcheck
#!/opt/venv/bin/python
"""Exit 0 if the edgewatch process (PID 1, or the pid given) is connected to Kafka."""
import os
import sys

from stream.config import ConfigError, load_config


def config_path(argv, environ):
    # argv is e.g. [/opt/venv/bin/python, /opt/venv/bin/edgewatch, worker, -c, FILE]:
    # read the options after the program (python's own -c is not --config).
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "edgewatch":
            argv = argv[i + 1 :]
            break
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return environ.get("EDGEWATCH_CONFIG", "/etc/edgewatch/plant.yaml")


def bootstrap_ports(servers):
    ports = set()
    for server in servers.split(","):
        _, sep, port = server.strip().rpartition(":")
        if server.strip():
            ports.add(int(port) if sep and port.isdigit() else 9092)
    return ports


def socket_inodes(pid):
    """Inodes of the sockets the process holds; None if its fds cannot be read."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return None
    return {link[8:-1] for link in links if link.startswith("socket:[")}


def established_remote_ports(inodes):
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # fields: sl local rem st ... inode; st 01 is TCP_ESTABLISHED
            if len(fields) > 9 and fields[3] == "01" and (inodes is None or fields[9] in inodes):
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def child_pids(pid):
    """The processes whose parent is ``pid`` (the worker's roles)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # after the ")" that ends the command name: state, then the parent pid
        if stat.rpartition(")")[2].split()[1] == str(pid):
            children.append(entry)
    return children


def main():
    pid = sys.argv[1] if len(sys.argv) > 1 else "1"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        print(f"unhealthy: no process {pid}")
        return 1
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(e.decode().partition("=")[::2] for e in f.read().split(b"\0") if e)
    except OSError:
        environ = dict(os.environ)
    try:
        config = load_config(config_path(argv, environ), environ)
    except ConfigError as exc:
        print(f"unhealthy: {exc}")
        return 1
    servers = config.kafka.bootstrap_servers
    wanted = bootstrap_ports(servers)
    processes = child_pids(pid) or [pid]
    cut_off = [p for p in processes if not established_remote_ports(socket_inodes(p)) & wanted]
    if not cut_off:
        print(f"healthy: pid {', '.join(processes)} connected to Kafka ({servers})")
        return 0
    print(f"unhealthy: pid {', '.join(cut_off)} has no established connection to Kafka ({servers}, ports {sorted(wanted)})")
    return 1


sys.exit(main())
EOF

USER edgewatch
WORKDIR /var/lib/edgewatch

# faust (worker) and the simulator's KeyboardInterrupt handler both stop cleanly
# on SIGINT (the simulator flushes what it has buffered); a Python PID 1 without
# a SIGTERM handler would ignore `docker stop` until it is killed 10 s later.
STOPSIGNAL SIGINT
# start-period: the worker creates topics and joins its consumer group first.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=4 CMD ["edgewatch-healthcheck"]

ENTRYPOINT ["edgewatch"]
CMD ["worker", "--config", "/etc/edgewatch/plant.yaml"]
