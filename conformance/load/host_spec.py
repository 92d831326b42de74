"""The hosts a load runs from: ``--hosts`` specs read, each host's share, an ssh preflight.

A host is an execnet gateway spec (``popen``, ``ssh=me@h2``) with its number
of load processes (``*N``): :class:`HostSpec` reads one and checks it before
anything starts, :func:`share_out` gives each host its part of the
connections, the connect storm and a seed of its own, and :func:`preflight`
asks an ssh host, with one short command, whether it can run the load at all
(execnet cannot tell an ssh failure from a missing interpreter). Running the
load on the hosts is :mod:`conformance.load.hosts`'s.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace

import execnet

from conformance.errors import UsageError
from conformance.load.spec import LoadSpec
from conformance.targets.spawn import no_input

__all__ = ["HostSpec", "parse_hosts", "preflight", "share_out"]

_SEED_STRIDE = 100_003  # host i runs with seed + i * this, so hosts do not repeat each other


@dataclass(frozen=True)
class HostSpec:
    """One ``--hosts`` value: an execnet gateway spec and its load processes."""

    gateway: str
    procs: int | None = None  # None: the run's --procs

    @classmethod
    def parse(cls, text: str) -> HostSpec:
        """Read ``SPEC`` or ``SPEC*N`` (``popen*2``, ``ssh=me@h2//python=python3*4``).

        An ``ssh=`` spec without ``python=`` runs ``python3`` on its host
        (execnet's own default, ``python``, is absent from many systems).

        Raises:
            UsageError: The spec is empty, ``N`` is not a positive count, execnet
                cannot read it, or it is neither a ``popen`` nor an ``ssh`` gateway.
        """
        gateway, star, count = text.strip().rpartition("*")
        if not star:
            gateway, count = count, ""
        elif not count.isdigit() or int(count) < 1:
            raise UsageError(f"bad host {text!r}: *N needs a positive count of load processes")
        if not gateway:
            raise UsageError(f"bad host {text!r}: give an execnet spec such as popen or popen*2")
        try:
            xspec = execnet.XSpec(gateway)
        except (AttributeError, ValueError) as exc:
            raise UsageError(f"bad host {text!r}: {exc}") from None
        ssh: object = xspec.ssh  # True when given as a bare "ssh"
        if ssh is True or (isinstance(ssh, str) and not ssh.split()):
            raise UsageError(f"bad host {text!r}: ssh= needs a destination (ssh=user@host)")
        if not xspec.popen and not xspec.ssh:
            raise UsageError(
                f"bad host {text!r}: give a popen or ssh= gateway (popen, ssh=user@host)"
            )
        if xspec.ssh and not xspec.python:
            gateway += "//python=python3"
        return cls(gateway, int(count) if count else None)

    @property
    def xspec(self) -> execnet.XSpec:
        """The gateway spec as execnet reads it."""
        return execnet.XSpec(self.gateway)

    @property
    def name(self) -> str:
        """How reports name the host: ``popen``, ``ssh=me@h2`` (its ssh destination)."""
        xspec = self.xspec
        if isinstance(xspec.ssh, str):
            return f"ssh={xspec.ssh.split()[-1]}"
        return self.gateway

    def ssh_command(self, code: str) -> list[str]:
        """The ssh command that runs ``python -c code`` on an ``ssh=`` host, as execnet would.

        ``BatchMode`` so that a host that asks for a password fails at once
        instead of waiting for a terminal.
        """
        xspec = self.xspec
        assert isinstance(xspec.ssh, str), "only for ssh= hosts"
        args = ["ssh", "-o", "BatchMode=yes"]
        if xspec.ssh_config is not None:
            args += ["-F", str(xspec.ssh_config)]
        args += xspec.ssh.split()
        args.append(f"{xspec.python or 'python3'} -c {shlex.quote(code)}")
        return args


def parse_hosts(texts: Sequence[str]) -> list[HostSpec]:
    """Read every ``--hosts`` value (see :meth:`HostSpec.parse`)."""
    return [HostSpec.parse(text) for text in texts]


#: What :func:`preflight` runs on an ssh host: its version, or why it cannot run the load.
_PREFLIGHT = "import sys; print('python %d.%d.%d' % sys.version_info[:3])"


def preflight(host: HostSpec, timeout: float) -> str | None:
    """Ask an ``ssh=`` host, with one short ssh command, whether it can run the load.

    execnet cannot tell an ssh failure from a missing interpreter (both end
    the bootstrap), so this asks first, under ``timeout``, and turns the
    answer into the reason a report gives.

    Returns:
        None when the host runs Python 3.11+; else why not, in a few words:
        ``ssh failed: ...``, ``python3 not found``, ``needs Python 3.11+, has
        3.9.2``, ``ssh did not answer within 9s``.
    """
    python = host.xspec.python or "python3"
    try:
        with no_input() as stdin:
            done = subprocess.run(
                host.ssh_command(_PREFLIGHT),
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
    except FileNotFoundError:
        return "ssh not found on this machine (install openssh-client)"
    except subprocess.TimeoutExpired:
        return f"ssh did not answer within {timeout:.0f}s"
    said = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode == 255:
        return f"ssh failed: {said or 'exit status 255'}"
    if done.returncode == 127:
        return f"{python} not found"
    words = done.stdout.split()
    if done.returncode != 0 or len(words) < 2 or words[0] != "python":
        return f"{python} did not run (exit status {done.returncode}): {said or done.stdout!r}"
    version = tuple(int(part) for part in words[1].split(".")[:2])
    if version < (3, 11):
        return f"needs Python 3.11+, has {words[1]}"
    return None


def share_out(spec: LoadSpec, hosts: Sequence[HostSpec]) -> list[tuple[str, LoadSpec]]:
    """Each host's label and spec: its load processes, its share of the connections, its seed.

    Args:
        spec: The whole run.
        hosts: The hosts, in order.

    Returns:
        One (label, spec) per host; a gateway spec given twice is labelled
        ``popen``, ``popen#2``.

    Raises:
        ValueError: No host, ``spec`` out of range, or fewer connections than
            load processes on all hosts.
    """
    if not hosts:
        raise ValueError("give at least one host")
    spec.validate()
    procs = [host.procs or spec.procs for host in hosts]
    total = sum(procs)
    if spec.connections < total:
        raise ValueError(
            f"connections ({spec.connections}) must be at least the load processes "
            f"on all hosts ({total})"
        )
    shares = _split(spec.connections, procs)
    storms = _split(spec.faults.connect_storm, shares)  # "in all": shared as the connections
    counts: dict[str, int] = {}
    shared = []
    for i, (host, n, share, storm) in enumerate(zip(hosts, procs, shares, storms, strict=True)):
        counts[host.name] = counts.get(host.name, 0) + 1
        label = host.name if counts[host.name] == 1 else f"{host.name}#{counts[host.name]}"
        own = replace(
            spec,
            connections=share,
            procs=n,
            seed=spec.seed + i * _SEED_STRIDE,
            faults=replace(spec.faults, connect_storm=storm),
        )
        own.validate()
        shared.append((label, own))
    return shared


def _split(total: int, weights: list[int]) -> list[int]:
    """``total`` shared out in proportion to ``weights``, the remainder one each from the first."""
    parts = [total * w // sum(weights) for w in weights]
    for i in range(total - sum(parts)):
        parts[i % len(parts)] += 1
    return parts
