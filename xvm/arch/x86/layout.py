"""Every guest-physical address, I/O port and IRQ number xvm uses, in one place.

The low 1 MiB follows the PC convention Linux expects (real-mode IVT, BIOS
data area, EBDA below 0xA0000, VGA hole, BIOS ROM at 0xF0000). Boot
structures xvm writes for a direct kernel boot sit in low RAM that the e820
map marks usable only where Linux may reclaim it. Above 1 MiB is the kernel;
RAM stops at MMIO_HOLE_START and continues at 4 GiB when the guest is larger.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PAGE_SIZE = 0x1000

# --- Low memory ------------------------------------------------------------
#: Real-mode interrupt vector table and BIOS data area (kept zeroed).
REAL_MODE_IVT_START = 0x0
#: Boot GDT written for direct 32/64-bit entry: null, unused, __BOOT_CS 0x10, __BOOT_DS 0x18,
#: and a 16-byte TSS descriptor at 0x20 (six 8-byte slots, ending at 0x530).
BOOT_GDT_START = 0x500
#: Boot IDT (empty; the kernel installs its own before enabling interrupts).
BOOT_IDT_START = 0x530
#: Initial stack top for the boot vCPU.
BOOT_STACK_POINTER = 0x8FF0
#: PVH boot (vmlinux entered at its XEN_ELFNOTE_PHYS32_ENTRY): struct hvm_start_info, then the
#: module list and the memory map, all in this page.
PVH_INFO_START = 0x6000
#: Linux zero page (struct boot_params).
ZERO_PAGE_START = 0x7000
#: Identity page tables for 64-bit entry: PML4, PDPT, then PDs (1 GiB each, 2 MiB pages).
PML4_START = 0x9000
PDPTE_START = 0xA000
PDE_START = 0xB000
#: Number of page directories after PDE_START: identity-maps the first 4 GiB.
BOOT_PD_COUNT = 4
#: Kernel command line.
CMDLINE_START = 0x20000
CMDLINE_MAX_SIZE = 0x10000
#: Multiboot information structure and what it points to (mmap, modules, strings).
MULTIBOOT_INFO_START = 0x30000
MULTIBOOT_INFO_MAX_SIZE = 0x10000
#: MP floating pointer + configuration table live in the EBDA, where Linux scans.
EBDA_START = 0x9FC00
MPTABLE_START = EBDA_START
#: End of conventional memory; 0xA0000-0xFFFFF is VGA and BIOS space (e820 reserved).
LOW_RAM_END = 0xA0000
#: ACPI tables (RSDP must sit in 0xE0000-0xFFFFF for Linux to find it without EFI).
ACPI_RSDP_START = 0xE0000
ACPI_TABLES_START = 0xE0040
BIOS_ROM_START = 0xF0000
#: First byte above the ISA hole; protected-mode kernels load here.
HIGH_MEMORY_START = 0x100000

# --- RAM and the 32-bit MMIO hole ------------------------------------------
#: Guest RAM below 4 GiB ends here; the rest of RAM moves above 4 GiB.
MMIO_HOLE_START = 0xC000_0000
MMIO_HOLE_END = 0x1_0000_0000
#: Where RAM resumes when the guest has more than MMIO_HOLE_START bytes.
HIGH_RAM_START = 0x1_0000_0000
#: virtio-mmio device windows (one 4 KiB page each, IRQs from VIRTIO_MMIO_IRQ_BASE).
VIRTIO_MMIO_START = 0xD000_0000
VIRTIO_MMIO_SIZE = 0x1000
#: 32-bit PCI BAR window.
PCI_MMIO_START = 0xE000_0000
PCI_MMIO_SIZE = 0x1000_0000 - 0x0100_0000
#: Where KVM wants its three-page TSS and the identity-map page (Intel real-mode emulation).
KVM_TSS_ADDRESS = 0xFFFB_D000
KVM_IDENTITY_MAP_ADDRESS = 0xFFFB_C000
IOAPIC_START = 0xFEC0_0000
LAPIC_START = 0xFEE0_0000

#: Smallest and largest guest RAM xvm accepts (MiB).
MIN_MEM_MIB = 16
MAX_MEM_MIB = 64 * 1024

# --- I/O ports ---------------------------------------------------------------
PORT_I8259_MASTER = 0x20
PORT_I8254_PIT = 0x40
PORT_I8042_DATA = 0x60
PORT_I8042_CMD = 0x64
PORT_RTC = 0x70
#: POST code port: writes ignored (Linux uses it for I/O delays).
PORT_POST_CODE = 0x80
PORT_I8259_SLAVE = 0xA0
#: isa-debug-exit: a write of v stops the VM with exit status (v << 1) | 1.
PORT_DEBUG_EXIT = 0xF4
PORT_COM1 = 0x3F8
PORT_COM2 = 0x2F8
PORT_PCI_CONFIG_ADDRESS = 0xCF8
PORT_PCI_CONFIG_DATA = 0xCFC

# --- IRQs (ISA numbering, routed 1:1 through the IOAPIC) ----------------------
IRQ_PIT = 0
IRQ_KEYBOARD = 1
IRQ_COM2 = 3
IRQ_COM1 = 4
IRQ_RTC = 8
IRQ_MOUSE = 12
#: First IRQ handed to virtio-mmio devices.
VIRTIO_MMIO_IRQ_BASE = 5
#: ISA IRQs free on a PC (no IDE, no floppy, no LPT) that carry PCI INTx, one per slot in turn
#: (slot n gets PCI_INTX_IRQS[(n - 1) % len]); devices beyond share a line.
PCI_INTX_IRQS = (10, 11, 9, 14, 15)
#: Number of IOAPIC pins (KVM's in-kernel IOAPIC has 24).
IOAPIC_PINS = 24
#: IOAPIC pin the PIT (ISA IRQ 0) arrives at, as the MP table and the MADT describe it. 0 keeps
#: the 1:1 ISA routing above, which is KVM's default GSI routing (irq_comm.c default_routing);
#: QEMU uses 2 (MADT override IRQ0->GSI2) and reroutes GSI 0 to pin 2 with KVM_SET_GSI_ROUTING.
PIT_IOAPIC_PIN = 0
#: System control port B: PIT channel 2 gate and speaker (write), OUT2 and refresh toggle (read).
PORT_SYSTEM_CONTROL_B = 0x61
#: 8259 edge/level control registers (PIIX/ICH ELCR1 master, ELCR2 slave at +1).
PORT_ELCR = 0x4D0
