"""Build a machine from a frozen MachineConfig in one ordered pass.

Each step needs only what earlier steps made (model: Firecracker builder.rs,
rust-vmm vmm-reference DESIGN.md):

1. engine     pick `auto` -> kvm or bt; open the engine (KvmError here if /dev/kvm is unusable)
2. memory     guest RAM around the 32-bit MMIO hole
3. buses      one PIO and one MMIO Bus
4. vm         the engine binds to memory; KVM creates its in-kernel irqchip + PIT
5. devices    xvm's own PIC/PIT/IOAPIC/LAPIC when the engine has no irqchip of its
              own (bt); then UART, i8042, RTC, debug-exit, POST port; PCI bus 0
              with virtio-rng and the virtio disks/NICs the config asks for
6. loader     kernel, initrd, command line, boot tables, boot vCPU state
7. vcpus      one per --cpus; the boot vCPU gets the loader's registers
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from xvm.arch.x86 import layout
from xvm.bus import Bus
from xvm.config import MachineConfig
from xvm.devices.clock import Clock, HostClock
from xvm.devices.legacy.debug_exit import DebugExit
from xvm.devices.legacy.i8042 import I8042
from xvm.devices.legacy.i8254_pit import I8254Pit, SystemControlPortB
from xvm.devices.legacy.interrupts import InterruptRouter
from xvm.devices.legacy.mc146818_rtc import Mc146818Rtc
from xvm.devices.legacy.post_code import PostCode
from xvm.devices.legacy.uart8250 import Uart8250
from xvm.engines.base import Engine, Vcpu, VmBackend
from xvm.errors import ConfigError, KvmError
from xvm.loaders import LoadedGuest, is_linux_kernel, load_guest
from xvm.machine.exits import ExitDispatcher
from xvm.machine.pci_devices import add_pci_and_virtio
from xvm.memory import GuestMemory

log = logging.getLogger(__name__)


@dataclass
class MachineParts:
    """Everything the builder made, in build order; Machine owns and closes it."""

    config: MachineConfig
    engine_name: str
    memory: GuestMemory
    pio: Bus
    mmio: Bus
    vm: VmBackend
    dispatcher: ExitDispatcher
    uart: Uart8250
    virtio: list
    loaded: LoadedGuest
    vcpus: list = field(default_factory=list)
    devices: dict = field(default_factory=dict)


@dataclass
class MachineHooks:
    """What devices call back into the machine for (stop requests and console output)."""

    on_debug_exit: Callable[[int], None]
    on_reset: Callable[[], None]
    on_console_output: Callable[[bytes], None]


def choose_engine(requested: str) -> str:
    """Resolve `--engine auto`: kvm on VT-x/AMD-V hosts, bt elsewhere.

    On a PVM host (/dev/kvm without hardware virtualization) KVM emulates guest
    kernel code; measured there, bt boots the default guest faster (about 75 s
    under PyPy against 90-340 s on kvm), so auto picks bt.
    """
    if requested != "auto":
        return requested
    from xvm.engines.kvm.host import detect_backend, kvm_available

    usable, _reason = kvm_available()
    return "kvm" if usable and detect_backend() != "pvm" else "bt"


def create_engine(name: str) -> Engine:
    """Instantiate an engine by name; raises KvmError when kvm cannot be used here."""
    if name == "kvm":
        from xvm.engines.kvm.host import kvm_available

        usable, reason = kvm_available()
        if not usable:
            raise KvmError(f"the kvm engine cannot run here: {reason} (or use --engine bt)")
        from xvm.engines.kvm.engine import KvmEngine

        return KvmEngine()
    if name == "bt":
        from xvm.engines.bt.engine import BtEngine

        return BtEngine()
    raise ConfigError(f"--engine {name!r} is unknown: use auto, kvm or bt")


def build(config: MachineConfig, hooks: MachineHooks) -> MachineParts:
    """Run the build steps in order; on failure release what was already made."""
    config.validate()
    engine_name = choose_engine(config.engine)
    engine = create_engine(engine_name)
    memory = GuestMemory.allocate(config.mem_bytes)
    try:
        pio, mmio = Bus("pio"), Bus("mmio")
        vm = engine.create_vm(memory, config.cpus)
        dispatcher = ExitDispatcher(pio, mmio)
        if vm.has_irqchip:
            timing = Timing(HostClock(), vm.add_timer)
        else:
            timing = _add_interrupt_controllers(config, vm, pio, mmio, dispatcher)
        uart = _add_legacy_devices(vm, pio, memory, timing, hooks)
        virtio = add_pci_and_virtio(config, vm, pio, mmio, memory, hooks.on_console_output)
        loaded = load_guest(memory, _with_engine_hints(config, vm).boot, config.cpus)
        parts = MachineParts(config, engine_name, memory, pio, mmio, vm, dispatcher, uart, virtio, loaded)
        for index in range(config.cpus):
            vcpu: Vcpu = vm.create_vcpu(index)
            parts.vcpus.append(vcpu)
        parts.vcpus[0].set_sregs(loaded.sregs)
        parts.vcpus[0].set_regs(loaded.regs)
        return parts
    except BaseException:
        memory.close()
        raise


@dataclass
class Timing:
    """The clock timed devices read, and how a timed device gets its tick() calls.

    On kvm the in-kernel PIT/LAPIC keep time, devices read the host clock and
    the VM's timer thread ticks them (engines/kvm/timers.py); on bt the
    InterruptRouter ticks timed devices from the engine's run loop.
    """

    clock: Clock
    timed: Callable[[object], object]


def _add_interrupt_controllers(
    config: MachineConfig, vm: VmBackend, pio: Bus, mmio: Bus, dispatcher: ExitDispatcher
) -> Timing:
    """xvm's PIC pair, IOAPIC, LAPICs and PIT for an engine without an in-kernel irqchip.

    The engine is connected to them before any device asks for an IRQ line;
    returns the clock timed devices must use (virtual time unless --clock host).
    """
    clock = vm.clock()
    router = InterruptRouter(config.cpus, clock, on_wake=vm.wake)
    for base, length, device in router.pio_devices():
        pio.insert(device, base, length)
    for base, length, device in router.mmio_devices():
        mmio.insert(device, base, length)
    trace = _stderr_line if config.trace else None
    vm.connect(dispatcher.serve_io, router, router.irq_line, router, router, config.clock, trace)
    pit = I8254Pit(router.irq_line(layout.IRQ_PIT), clock)
    pio.insert(router.add_timer(pit), layout.PORT_I8254_PIT, 4)
    pio.insert(router.guard(SystemControlPortB(pit)), layout.PORT_SYSTEM_CONTROL_B, 1)
    return Timing(clock, router.add_timer)


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")


def _with_engine_hints(config: MachineConfig, vm: VmBackend) -> MachineConfig:
    """Append what the engine needs on a Linux command line (e.g. CPUID masking on PVM hosts)."""
    given = {word.split("=", 1)[0] for word in config.boot.cmdline.split()}
    hints = " ".join(word for word in getattr(vm, "linux_cmdline_hints", lambda: "")().split()
                     if word.split("=", 1)[0] not in given)  # the user's own value wins
    if not hints or config.boot.kernel is None:
        return config
    with open(config.boot.kernel, "rb") as kernel:
        if not is_linux_kernel(kernel.read()):
            return config
    return replace(config, boot=replace(config.boot, cmdline=f"{config.boot.cmdline} {hints}"))


def _add_legacy_devices(vm: VmBackend, pio: Bus, memory: GuestMemory, timing: Timing,
                        hooks: MachineHooks) -> Uart8250:
    """The PC devices every machine has, at their ISA ports."""
    uart = Uart8250(vm.irq_line(layout.IRQ_COM1), hooks.on_console_output)
    pio.insert(uart, layout.PORT_COM1, 8)
    pio.insert(DebugExit(hooks.on_debug_exit), layout.PORT_DEBUG_EXIT, 1)
    pio.insert(PostCode(), layout.PORT_POST_CODE, 1)
    i8042 = I8042(hooks.on_reset, vm.irq_line(layout.IRQ_KEYBOARD), vm.irq_line(layout.IRQ_MOUSE))
    pio.insert(i8042.data_port, layout.PORT_I8042_DATA, 1)
    pio.insert(i8042.command_port, layout.PORT_I8042_CMD, 1)
    low = min(memory.size, layout.MMIO_HOLE_START)
    rtc = Mc146818Rtc(vm.irq_line(layout.IRQ_RTC), timing.clock, time.time, low, memory.size - low)
    pio.insert(timing.timed(rtc), layout.PORT_RTC, 2)
    return uart
