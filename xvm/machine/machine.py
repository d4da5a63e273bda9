"""A running machine: vCPU threads, the exit loop, start/pause/resume/stop.

    from xvm import Machine, MachineConfig
    with Machine(MachineConfig(mem_mib=256)) as vm:
        result = vm.run_command(["uname", "-a"])
    print(result.output, result.status)

One thread per vCPU calls `Vcpu.run()` (KVM_RUN releases the GIL, so vCPUs
really run in parallel on the kvm engine) and serves exits through the one
ExitDispatcher. Whatever ends the VM (a debug-exit write, a reset, a triple
fault, a timeout, stop()) records a VmStop once and kicks every vCPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Optional

from xvm.arch.x86.regs import format_register_dump
from xvm.config import MachineConfig
from xvm.devices.virtio.console import VirtioConsole
from xvm.engines.base import (
    FailEntry,
    Hlt,
    InternalError,
    Interrupted,
    Shutdown,
    SystemEvent,
    Unhandled,
    VcpuExit,
)
from xvm.errors import XvmError
from xvm.machine import builder
from xvm.machine.console import Console

log = logging.getLogger(__name__)

#: Exit codes of `xvm run` (and RunResult.exit_code) besides the guest's own status.
EXIT_VM_FAILURE = 4
EXIT_TIMEOUT = 124


@dataclass
class VmStop:
    """Why the VM stopped, decided once by whoever stopped it first."""

    reason: str
    exit_code: int
    message: str = ""
    dump: str = ""
    #: The raw value written to the debug-exit port, if that is how it ended.
    guest_value: Optional[int] = None


@dataclass
class RunResult:
    """What `Machine.run()` / `run_command()` return."""

    exit_code: int
    reason: str
    output: str
    message: str = ""
    dump: str = ""

    @property
    def status(self) -> int:
        """The guest command's exit status (run_command) or the machine's exit code."""
        return self.exit_code


class Machine:
    """A virtual machine built from a MachineConfig (see module docstring)."""

    def __init__(self, config: MachineConfig, console: Optional[Console] = None,
                 command: Optional[Sequence[str]] = None) -> None:
        self.config = config
        self.console = console if console is not None else Console(echo=False, capture=True)
        self.command = list(command) if command is not None else None
        self.parts: Optional[builder.MachineParts] = None
        self._stop: Optional[VmStop] = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._paused = False
        self._pause_cond = threading.Condition()
        self._threads: list = []

    # --- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        """Create memory, devices, engine and vCPUs, and load the guest."""
        if self.parts is not None:
            return
        config = self._boot_config()
        hooks = builder.MachineHooks(self._on_debug_exit, self._on_reset, self.console.write)
        self.parts = builder.build(config, hooks)

    def _boot_config(self) -> MachineConfig:
        """The config with the default guest filled in and the command line completed."""
        boot = self.config.boot
        if boot.kernel is None:
            from xvm.images import default_guest

            images = default_guest(build=True)
            # With root= the guest boots from a disk: the initramfs's /init would hide it.
            initrd = boot.initrd or (None if "root=" in boot.cmdline else images.initrd)
            boot = replace(boot, kernel=images.boot_kernel, initrd=initrd)
        if self.command is not None:
            from xvm.images import command_cmdline

            boot = replace(boot, cmdline=f"{boot.cmdline} {command_cmdline(self.command)}")
        return replace(self.config, boot=boot)

    def start(self) -> None:
        """Start one thread per vCPU."""
        self.build()
        assert self.parts is not None
        for vcpu in self.parts.vcpus:
            thread = threading.Thread(target=self._vcpu_loop, args=(vcpu,), name=f"vcpu{vcpu.index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def wait(self, timeout: Optional[float] = None) -> VmStop:
        """Block until the VM stops (or `timeout` seconds pass: then stop it)."""
        if not self._stopped.wait(timeout):
            self._request_stop(VmStop("timeout", EXIT_TIMEOUT, f"the VM did not stop within {timeout:g} s"))
        for thread in self._threads:
            thread.join(timeout=5)
        assert self._stop is not None
        return self._stop

    def run(self) -> RunResult:
        """Boot, wait for the guest to stop, and report how it ended."""
        self.start()
        stop = self.wait(self.config.timeout)
        return RunResult(stop.exit_code, stop.reason, self.console.output(), stop.message, stop.dump)

    def run_command(self, argv: Sequence[str]) -> RunResult:
        """Boot the guest so that /init runs `argv`; the result carries its output and exit status."""
        if self.parts is not None:
            raise XvmError("run_command() boots the VM itself: call it on a fresh Machine")
        self.command = list(argv)
        self.console.capture = True
        return self.run()

    def pause(self) -> None:
        """Stop executing guest code until resume(); devices keep their state."""
        with self._pause_cond:
            self._paused = True
        self._kick_all()

    def resume(self) -> None:
        with self._pause_cond:
            self._paused = False
            self._pause_cond.notify_all()

    def stop(self) -> None:
        """Stop the VM (as if powered off) and wait for the vCPU threads."""
        self._request_stop(VmStop("stopped", 0, "stopped by the host"))
        self.resume()
        for thread in self._threads:
            thread.join(timeout=5)

    def close(self) -> None:
        """Stop if running and release every host resource (threads, fds, memory, terminal)."""
        if self._threads and not self._stopped.is_set():
            self.stop()
        self.console.close()
        if self.parts is not None:
            self.parts.virtio.close()
            for vcpu in self.parts.vcpus:
                vcpu.close()
            self.parts.vm.close()
            self.parts.memory.close()
            self.parts = None

    @property
    def engine_name(self) -> str:
        return self.parts.engine_name if self.parts else self.config.engine

    def deliver_console_input(self, data: bytes) -> int:
        """Type `data` into the guest's console; returns how many bytes were taken.

        With --virtio-console the keyboard goes to hvc0 (boot with console=hvc0),
        otherwise to the serial port.
        """
        assert self.parts is not None
        for device in self.parts.virtio:
            if isinstance(device, VirtioConsole):
                return device.receive(data)
        return self.parts.uart.receive(data)

    def stats(self) -> dict:
        """Exit counts by kind, bus statistics and per-vCPU engine statistics."""
        if self.parts is None:
            return {}
        parts = self.parts
        return {
            "engine": parts.engine_name,
            "exits": dict(parts.dispatcher.counts),
            "pio_unmapped": {"reads": parts.pio.unmapped_reads, "writes": parts.pio.unmapped_writes},
            "mmio_unmapped": {"reads": parts.mmio.unmapped_reads, "writes": parts.mmio.unmapped_writes},
            "vcpus": [dict(getattr(v, "stats", {})) for v in parts.vcpus],
        }

    # --- the vCPU loop -----------------------------------------------------
    def _vcpu_loop(self, vcpu) -> None:
        assert self.parts is not None
        serve_io = self.parts.dispatcher.serve_io
        try:
            while self._stop is None:
                if self._paused:
                    with self._pause_cond:
                        while self._paused and self._stop is None:
                            self._pause_cond.wait()
                    continue
                exit_ = vcpu.run()
                if not serve_io(exit_):
                    self._handle_stop_exit(vcpu, exit_)
        except XvmError as error:
            self._request_stop(VmStop("error", error.exit_code, str(error), self._dump(vcpu)))
        except Exception as error:  # an xvm bug: stop the VM, never hang the user
            log.exception("vCPU %d crashed", vcpu.index)
            self._request_stop(VmStop("error", EXIT_VM_FAILURE, f"internal error in vCPU {vcpu.index}: {error!r}",
                                      self._dump(vcpu)))

    def _handle_stop_exit(self, vcpu, exit_: VcpuExit) -> None:
        """Exits that are not device accesses: most end the VM."""
        if isinstance(exit_, Interrupted):
            return
        if isinstance(exit_, Hlt):
            self._request_stop(VmStop("halt", 0, "the guest halted with interrupts disabled"))
        elif isinstance(exit_, Shutdown):
            self._request_stop(VmStop("triple-fault", EXIT_VM_FAILURE,
                                      f"the guest stopped: {exit_.reason} on vCPU {vcpu.index}", self._dump(vcpu)))
        elif isinstance(exit_, SystemEvent):
            code = 0 if exit_.kind in ("shutdown", "reset") else EXIT_VM_FAILURE
            self._request_stop(VmStop(exit_.kind, code, f"the guest requested {exit_.kind}"))
        elif isinstance(exit_, FailEntry):
            message = f"VM entry failed on vCPU {vcpu.index} (hardware reason {exit_.hardware_reason:#x})"
            self._request_stop(VmStop("fail-entry", EXIT_VM_FAILURE, message, self._dump(vcpu)))
        elif isinstance(exit_, InternalError):
            self._request_stop(VmStop("internal-error", EXIT_VM_FAILURE,
                                      f"the engine could not run the guest on vCPU {vcpu.index}: {exit_.detail}",
                                      self._dump(vcpu)))
        elif isinstance(exit_, Unhandled):
            self._request_stop(VmStop("unhandled-exit", EXIT_VM_FAILURE,
                                      f"unhandled exit {exit_.name or exit_.reason} on vCPU {vcpu.index}",
                                      self._dump(vcpu)))
        else:
            self._request_stop(VmStop("unhandled-exit", EXIT_VM_FAILURE, f"unexpected exit {exit_!r}",
                                      self._dump(vcpu)))

    @staticmethod
    def _dump(vcpu) -> str:
        try:
            return format_register_dump(vcpu.get_regs(), vcpu.get_sregs())
        except Exception as error:  # the dump must never hide the original failure
            return f"(registers unavailable: {error})"

    # --- device callbacks --------------------------------------------------
    def _on_debug_exit(self, value: int) -> None:
        if self.command is not None:
            stop = VmStop("debug-exit", value & 0xFF, f"command exited with status {value & 0xFF}", guest_value=value)
        else:
            stop = VmStop("debug-exit", ((value << 1) | 1) & 0xFF, f"debug-exit port written with {value:#x}",
                          guest_value=value)
        self._request_stop(stop)

    def _on_reset(self) -> None:
        if self.command is not None:
            self._request_stop(VmStop("reset", EXIT_VM_FAILURE,
                                      "the guest rebooted before reporting the command's status"))
        else:
            self._request_stop(VmStop("reset", 0, "the guest rebooted (treated as power-off)"))

    def _request_stop(self, stop: VmStop) -> None:
        with self._stop_lock:
            if self._stop is not None:
                return
            self._stop = stop
        self._stopped.set()
        self._kick_all()
        with self._pause_cond:
            self._pause_cond.notify_all()

    def _kick_all(self) -> None:
        if self.parts is None:
            return
        for vcpu in self.parts.vcpus:
            vcpu.kick()

