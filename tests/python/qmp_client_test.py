#!/usr/bin/env python3
"""QEMU's own QMP client library (qemu.qmp, from PyPI) against the device model's QMP.

Starts the unix-socket adapter (devices/examples/unix_server.rs: the device model's
run state and block layer as a stub domain has them, with a CD-ROM ide-5632 whose
medium is /dev/fdset/<N> and a hard disk for devid 768), drives it with
qemu.qmp.QMPClient the way a management tool would, and prints one line per check:

    test qmp::python::<name> ... ok
    test qmp::python::<name> ... FAILED

(cargo xtask test counts these lines). Exits 1 if any check failed.

    cargo build -p devices --example unix_server
    target/py-venv/bin/python tests/python/qmp_client_test.py target/debug/examples/unix_server

cargo xtask test runs it that way (it creates target/py-venv with a pinned qemu.qmp).
"""

import asyncio
import os
import sys
import tempfile

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.protocol import Runstate

PREFIX = "qmp::python::"
# Each check's own limit, and the adapter's start-up and exit limits (seconds).
CHECK_TIMEOUT = 10
START_TIMEOUT = 10
EXIT_TIMEOUT = 5

CD = "ide-5632"
CD_DEVID = 5632
# The commands libxl sends a qemu-xen (stub) device model: libxl_qmp.c, libxl_disk.c,
# libxl_dom_save.c, libxl_dom_suspend.c.
LIBXL_COMMANDS = {
    "qmp_capabilities",
    "query-status",
    "stop",
    "cont",
    "eject",
    "blockdev-change-medium",
    "add-fd",
    "remove-fd",
    "query-fdsets",
    "xen-set-global-dirty-log",
    "xen-save-devices-state",
    "xen-load-devices-state",
}


class CheckFailed(Exception):
    pass


def expect(condition, what):
    if not condition:
        raise CheckFailed(what)


def block_info(blocks, device):
    found = [b for b in blocks if b.get("device") == device or b.get("qdev") == device]
    expect(len(found) == 1, f"query-block has no single {device!r}: {blocks!r}")
    return found[0]


async def next_event(listener, name):
    event = await asyncio.wait_for(listener.get(), CHECK_TIMEOUT / 2)
    expect(event.get("event") == name, f"expected event {name}, got {event!r}")
    stamp = event.get("timestamp", {})
    expect(isinstance(stamp.get("seconds"), int) and isinstance(stamp.get("microseconds"), int),
           f"event without a timestamp: {event!r}")
    return event


async def expect_error(qmp, command, arguments, error_class, desc):
    try:
        reply = await qmp.execute(command, arguments)
    except ExecuteError as error:
        expect(error.error_class == error_class,
               f"{command}: class {error.error_class!r}, expected {error_class!r}")
        expect(str(error) == desc, f"{command}: desc {str(error)!r}, expected {desc!r}")
        return
    raise CheckFailed(f"{command} succeeded: {reply!r}")


class Run:
    """The shared state of the checks, which run in order on one adapter process."""

    def __init__(self, adapter):
        self.adapter_path = adapter
        self.dir = tempfile.TemporaryDirectory(prefix="qmp-python-")
        self.socket = os.path.join(self.dir.name, "qmp.sock")
        self.log_path = os.path.join(self.dir.name, "unix_server.log")
        self.adapter = None
        self.qmp = None
        self.greeting = None
        self.cd_fdset = None
        self.results = []

    async def start_adapter(self):
        self.log = open(self.log_path, "wb")
        self.adapter = await asyncio.create_subprocess_exec(
            self.adapter_path, self.socket,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self.log)
        line = await asyncio.wait_for(self.adapter.stdout.readline(), START_TIMEOUT)
        if not line.startswith(b"listening on "):
            raise RuntimeError(f"the adapter did not start: {line!r}")

    async def stop_adapter(self):
        if self.qmp is not None and self.qmp.runstate != Runstate.IDLE:
            try:
                await asyncio.wait_for(self.qmp.disconnect(), 2)
            except Exception:  # already failing; the checks said why
                pass
        if self.adapter is not None and self.adapter.returncode is None:
            # Closing its stdin is the adapter's signal to exit.
            self.adapter.stdin.close()
            try:
                await asyncio.wait_for(self.adapter.wait(), EXIT_TIMEOUT)
            except asyncio.TimeoutError:
                self.adapter.kill()
                await self.adapter.wait()

    async def check(self, name, body):
        try:
            await asyncio.wait_for(body(), CHECK_TIMEOUT)
            self.results.append((name, None))
            print(f"test {PREFIX}{name} ... ok", flush=True)
        except Exception as error:  # every failure is reported, the next check still runs
            reason = str(error) or type(error).__name__
            if not isinstance(error, CheckFailed):
                reason = f"{type(error).__name__}: {reason}"
            self.results.append((name, reason))
            print(f"test {PREFIX}{name} ... FAILED", flush=True)
            print(f"    {reason}", flush=True)

    # The checks, in the order they run.

    async def handshake(self):
        qmp = QMPClient("xtask")
        await qmp.connect(self.socket)  # reads the greeting, sends qmp_capabilities
        self.qmp = qmp
        expect(qmp.runstate == Runstate.RUNNING, f"runstate {qmp.runstate}")
        greeting = qmp.greeting
        expect(greeting is not None, "no greeting")
        version = greeting.QMP.version
        qemu = version.get("qemu", {})
        expect(all(isinstance(qemu.get(k), int) for k in ("major", "minor", "micro")),
               f"greeting version {version!r}")
        expect((qemu["major"], qemu["minor"]) >= (2, 11), f"announces QEMU {qemu!r}; libxl needs >= 2.11")
        expect(list(greeting.QMP.capabilities) == [], f"capabilities {greeting.QMP.capabilities!r}")
        self.greeting = greeting._asdict()
        # Negotiated: a command other than qmp_capabilities is accepted.
        await expect_error(qmp, "qmp_capabilities", None, "CommandNotFound",
                           "Capabilities negotiation is already complete, command ignored")

    async def query_version(self):
        reply = await self.qmp.execute("query-version")
        expect(reply == self.greeting["QMP"]["version"], f"{reply!r} is not the greeting's version")
        expect(isinstance(reply.get("package"), str), f"package {reply!r}")

    async def query_status(self):
        reply = await self.qmp.execute("query-status")
        expect(reply == {"running": True, "status": "running"}, f"query-status {reply!r}")

    async def query_commands(self):
        reply = await self.qmp.execute("query-commands")
        names = {command["name"] for command in reply}
        missing = LIBXL_COMMANDS - names
        expect(not missing, f"libxl's commands missing from query-commands: {sorted(missing)}")
        expect("query-commands" in names and "quit" in names, f"query-commands: {sorted(names)}")

    async def query_block(self):
        blocks = await self.qmp.execute("query-block")
        expect(len(blocks) == 2, f"two drives expected: {blocks!r}")
        cd = block_info(blocks, CD)
        expect(cd.get("removable") is True and cd.get("tray_open") is False and cd.get("locked") is False,
               f"CD-ROM state {cd!r}")
        inserted = cd.get("inserted")
        expect(inserted is not None, f"no medium in the CD-ROM: {cd!r}")
        expect(inserted["file"].startswith("/dev/fdset/") and inserted["drv"] == "host_device"
               and inserted["ro"] is True, f"CD-ROM medium {inserted!r}")
        fdsets = await self.qmp.execute("query-fdsets")
        stub = [s["fdset-id"] for s in fdsets
                if any(fd.get("opaque") == f"stub-devid:{CD_DEVID}" for fd in s["fds"])]
        expect(len(stub) == 1, f"one fdset for stub-devid:{CD_DEVID} expected: {fdsets!r}")
        self.cd_fdset = stub[0]
        expect(inserted["file"] == f"/dev/fdset/{self.cd_fdset}",
               f"medium {inserted['file']}, fdset {self.cd_fdset}")
        disk = [b for b in blocks if b is not cd][0]
        expect(disk.get("removable") is False and "tray_open" not in disk
               and disk.get("inserted", {}).get("ro") is False, f"hard disk {disk!r}")

    async def eject(self):
        with self.qmp.listener("DEVICE_TRAY_MOVED") as listener:
            reply = await self.qmp.execute("eject", {"id": CD})
            expect(reply == {}, f"eject returned {reply!r}")
            event = await next_event(listener, "DEVICE_TRAY_MOVED")
            expect(event.get("data") == {"device": CD, "id": CD, "tray-open": True}, f"event {event!r}")
        cd = block_info(await self.qmp.execute("query-block"), CD)
        expect(cd.get("tray_open") is True, f"tray not open after eject: {cd!r}")
        expect("inserted" not in cd, f"medium still inserted after eject: {cd!r}")

    async def change_medium(self):
        expect(self.cd_fdset is not None, "query_block did not find the CD's fdset")
        filename = f"/dev/fdset/{self.cd_fdset}"
        with self.qmp.listener("DEVICE_TRAY_MOVED") as listener:
            reply = await self.qmp.execute("blockdev-change-medium",
                                           {"id": CD, "filename": filename, "format": "host_device"})
            expect(reply == {}, f"blockdev-change-medium returned {reply!r}")
            event = await next_event(listener, "DEVICE_TRAY_MOVED")
            expect(event["data"].get("tray-open") is False, f"event {event!r}")
        cd = block_info(await self.qmp.execute("query-block"), CD)
        inserted = cd.get("inserted") or {}
        expect(cd.get("tray_open") is False, f"tray open after the change: {cd!r}")
        expect(inserted.get("file") == filename and inserted.get("drv") == "host_device",
               f"medium after the change: {cd!r}")

    async def stop_cont(self):
        with self.qmp.listener(("STOP", "RESUME")) as listener:
            expect(await self.qmp.execute("stop") == {}, "stop did not return {}")
            await next_event(listener, "STOP")
            status = await self.qmp.execute("query-status")
            expect(status == {"running": False, "status": "paused"}, f"after stop: {status!r}")
            expect(await self.qmp.execute("cont") == {}, "cont did not return {}")
            await next_event(listener, "RESUME")
            status = await self.qmp.execute("query-status")
            expect(status == {"running": True, "status": "running"}, f"after cont: {status!r}")

    async def unknown_command(self):
        await expect_error(self.qmp, "no-such-command", None, "CommandNotFound",
                           "The command no-such-command has not been found")

    async def add_fd(self):
        # What QEMU answers when no descriptor came with the message (monitor/fds.c).
        await expect_error(self.qmp, "add-fd", {"opaque": "python"}, "GenericError",
                           "No file descriptor supplied via SCM_RIGHTS")

    async def reconnect(self):
        await self.qmp.disconnect()
        qmp = QMPClient("xtask-2")
        await qmp.connect(self.socket)
        self.qmp = qmp
        expect(qmp.runstate == Runstate.RUNNING, f"runstate {qmp.runstate}")
        expect(qmp.greeting is not None and qmp.greeting._asdict() == self.greeting,
               f"second greeting {qmp.greeting!r}")
        # The VM outlives connections: the medium changed on the first one is there.
        cd = block_info(await qmp.execute("query-block"), CD)
        expect((cd.get("inserted") or {}).get("file") == f"/dev/fdset/{self.cd_fdset}", f"{cd!r}")
        status = await qmp.execute("query-status")
        expect(status == {"running": True, "status": "running"}, f"query-status {status!r}")

    async def quit(self):
        reply = await self.qmp.execute("quit")
        expect(reply == {}, f"quit returned {reply!r}")
        try:
            await self.qmp.disconnect()
        except EOFError:  # the server hung up first, as QEMU does after quit
            pass
        code = await asyncio.wait_for(self.adapter.wait(), EXIT_TIMEOUT)
        expect(code == 0, f"the adapter exited with {code}")
        expect(not os.path.exists(self.socket), "the socket file is left behind")


CHECKS = ["handshake", "query_version", "query_status", "query_commands", "query_block",
          "eject", "change_medium", "stop_cont", "unknown_command", "add_fd", "reconnect", "quit"]


async def main(adapter):
    run = Run(adapter)
    try:
        try:
            await run.start_adapter()
        except Exception as error:
            for name in CHECKS:
                print(f"test {PREFIX}{name} ... FAILED", flush=True)
            print(f"    could not start {adapter}: {error}", flush=True)
            return 1
        for name in CHECKS:
            await run.check(name, getattr(run, name))
    finally:
        await run.stop_adapter()
        failed = [name for name, reason in run.results if reason is not None]
        if failed and os.path.exists(run.log_path):
            with open(run.log_path, errors="replace") as log:
                print("unix_server's log:\n" + log.read(), flush=True)
        run.dir.cleanup()
    return 1 if failed or len(run.results) != len(CHECKS) else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: qmp_client_test.py PATH-TO-unix_server")
    sys.exit(asyncio.run(main(sys.argv[1])))
