"""Build xvm's self-checking test guests (nasm + ld) and say what each must print.

Every `*.asm` here is a 32-bit multiboot v1 ELF kernel built with
`nasm -f elf32` and linked at 1 MiB by `link.ld` (`ld -m elf_i386`). The
outputs go to tests/guests/build/ (git-ignored) and are rebuilt only when a
source is newer. `GUESTS` is the contract the tests check: the command line a
guest is booted with, the exact `PASS` lines it prints, and the value it writes
to the debug-exit port (None: it must end in a triple fault instead).

    python tests/guests/build.py            # build all, print the paths
    python tests/guests/build.py smc v86    # build some

Models: Blink test/asm/ and kvmtool tests/pit/ (tiny guests committed with the
recipe that builds them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SOURCE_DIR = Path(__file__).resolve().parent
BUILD_DIR = SOURCE_DIR / "build"
LINKER_SCRIPT = SOURCE_DIR / "link.ld"
SHARED_SOURCES = (SOURCE_DIR / "lib.inc", SOURCE_DIR / "lib64.inc", LINKER_SCRIPT)


class GuestBuildError(RuntimeError):
    """nasm or ld is missing, or a guest does not assemble or link."""


@dataclass(frozen=True)
class Guest:
    """One test guest and what a correct machine makes it do."""

    name: str
    #: The multiboot command line to boot it with.
    cmdline: str
    #: Value written to port 0xF4 (exit status (v << 1) | 1); None = must triple fault.
    exit_value: Optional[int]
    #: Check names it prints as `PASS <name>`, in order.
    passes: tuple[str, ...]
    #: vCPUs to boot it with.
    cpus: int = 1

    @property
    def source(self) -> Path:
        return SOURCE_DIR / f"{self.name}.asm"

    @property
    def output(self) -> Path:
        return BUILD_DIR / f"{self.name}.elf"

    def problems(self, status: int, console: str, triple_fault_status: int) -> list[str]:
        """What differs between a run (exit status, COM1 text) and this guest's contract.

        `triple_fault_status` is how the machine under test reports a triple
        fault (QEMU with -no-reboot: 0; xvm: 4). Empty list: the run is correct.
        """
        lines = [line.strip() for line in console.splitlines()]
        found: list[str] = []
        for line in lines:
            if line.startswith("PASS "):
                found.append(line[len("PASS "):])
        problems = [f"guest reported: {line}" for line in lines if line.startswith("FAIL ")]
        if found != list(self.passes):
            missing = [name for name in self.passes if name not in found]
            extra = [name for name in found if name not in self.passes]
            problems.append(f"PASS lines differ: missing {missing}, unexpected {extra}" if missing or extra
                            else f"PASS lines out of order: {found}")
        want = triple_fault_status if self.exit_value is None else (self.exit_value << 1) | 1
        if status != want:
            problems.append(f"exit status {status}, want {want}")
        return problems


def _guest(name: str, checks: str, cmdline: str = "", exit_value: Optional[int] = 0, cpus: int = 1) -> Guest:
    return Guest(name, cmdline, exit_value, tuple(f"{name}.{check}" for check in checks.split()), cpus)


#: Every guest, in the order of the README.
GUESTS: dict[str, Guest] = {
    guest.name: guest
    for guest in (
        _guest(
            "hello",
            "magic mem_flag mem_upper_nonzero cmdline_flag cmdline",
            cmdline="console=ttyS0 check=cmdline",
        ),
        _guest("triple_fault", "", exit_value=None),
        _guest(
            "paging32",
            "enabled ad_clear alias_read accessed_after_read dirty_after_write alias_write pde_accessed"
            " pf_read_vector pf_read_error pf_read_cr2 pf_read_eip pf_write_error pf_write_cr2"
            " pf_wp_error pf_wp_eip wp_write_blocked invlpg now_present",
        ),
        _guest(
            "long_mode",
            "entered efer_lma mul64_low mul64_high imul64_imm rip_relative r8_r15_shift zero_extend32 push_pop",
        ),
        _guest(
            "paging64",
            "ad_clear alias_read accessed_after_read dirty_after_write alias_write pf_read_vector pf_read_error"
            " pf_read_cr2 pf_read_rip pf_write_error pf_wp_error wp_write_blocked pf_nx_error pf_nx_rip invlpg"
            " cr3_switch cr3_switch_back page_faults_taken",
        ),
        _guest(
            "exceptions",
            "de_vector de_eip ud_vector ud_eip ud_cs bp_vector bp_eip gp_ds_unchanged gp_vector gp_error gp_eip"
            " gp_null_ss_error gp_null_ss_eip iret_restores_flags iret_cf iret_esp no_pending_resume",
        ),
        _guest(
            "privilege",
            "back_in_ring0 ring3_cpl iret_nulls_ring0_ds int80_handler_cpl int80_caller_cs int80_caller_ss"
            " int80_caller_esp int80_stack_from_tss int80_return_value cli_gp_error cli_gp_eip cli_gp_from_ring3 hlt_gp"
            " mov_cr3_gp int_dpl0_gate_vector int_dpl0_gate_error",
        ),
        _guest(
            "user64",
            "back_in_ring0 ring3_cpl syscall_rcx syscall_r11_rflags syscall_cs syscall_ss syscall_fmask"
            " syscall_result sysret_cs sysret_ss sysret_rflags int80_caller_cs int80_caller_ss"
            " int80_stack_from_tss int80_result cli_gp_vector cli_gp_error cli_gp_rip cli_gp_cs"
            " supervisor_pf_vector supervisor_pf_error supervisor_pf_cr2",
        ),
        _guest(
            "smc",
            "first_execution patched_reexecution same_block_ahead loop_self_patch copied_code"
            " overwritten_code one_byte_patch second_page first_page_kept",
        ),
        _guest(
            "pagetable_writes",
            "pd_a cr3_switch_to_b cr3_switch_back_to_a pte_via_mapping write_follows pte_then_cr3_reload"
            " pt_self_map pde_change pt_c_invlpg pd_b_unchanged",
        ),
        _guest(
            "realmode",
            "back_in_protected_mode pe_was_clear segment_arithmetic offset_wraps_at_64k operand_size_32"
            " int_handler_ran int_frame_ip int_frame_cs int_frame_flags_cf int_clears_if_tf iret_restores_cf"
            " stack_balanced",
        ),
        _guest(
            "v86",
            "arithmetic segment_arithmetic cs_is_paragraph cli_trapped int20_emulated gp_error_zero"
            " monitor_entries handler_ds_null frame_vm_flag frame_ds frame_ss monitor_stack_from_tss",
        ),
        _guest(
            "sse",
            "paddd_lane0 paddd_lane3 pshufd_movd pcmpeqb_pmovmskb scalar_double cvt_sqrt fxsave_fcw fxsave_mxcsr"
            " fxsave_xmm0 fxrstor_xmm0 mmx_paddusb mmx_pmaddwd_wrap mmx_pmaddwd mmx_packsswb mmx_psraw_past_width"
            " mmx_tags_valid mmx_top_zero mmx_fxsave_mm1 emms_tags_empty ts_nm_vector"
            " ts_nm_eip after_clts",
        ),
        _guest("x87", "add imul sqrt compare default_cw"),
        _guest(
            "timer_irq",
            "pic_imr pit_counts pit_count_in_range pit_ticks pit_vector_only lapic_counts_down lapic_ticks pit_masked",
        ),
        _guest("rtc_irq", "pic_imr reg_a ticks reg_c_irqf_pf vector_only pie_off"),
        _guest("smp", "bsp_apic_id ap_checked_in ap_apic_id ap_protected_mode_cs ap_started_in_real_mode", cpus=2),
        # A short run for the test suite; bench/pio_exits.py passes a larger count.
        _guest("pio_loop", "count", cmdline="count=1000"),
        _guest("cpu_bound", "integer copy sieve", cmdline="count=2"),
    )
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GuestBuildError(f"{name} not found: install it (Debian: apt-get install nasm binutils)")
    return path


def _run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=SOURCE_DIR, capture_output=True, text=True)
    if result.returncode != 0:
        raise GuestBuildError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")


def build(guest: Guest) -> Path:
    """Assemble and link one guest unless its ELF is newer than every source."""
    output = guest.output
    sources = (guest.source,) + SHARED_SOURCES
    if output.exists() and all(output.stat().st_mtime >= source.stat().st_mtime for source in sources):
        return output
    BUILD_DIR.mkdir(exist_ok=True)
    obj = BUILD_DIR / f"{guest.name}.o"
    # -w+error: a guest that assembles with warnings (e.g. data in .bss) is broken.
    _run([_tool("nasm"), "-f", "elf32", "-w+error", "-I", f"{SOURCE_DIR}/", "-o", str(obj), str(guest.source)])
    # -n: no page alignment, so one PT_LOAD at 1 MiB and the multiboot header near the file start.
    temporary = output.with_suffix(".tmp")
    _run([_tool("ld"), "-m", "elf_i386", "-n", "-T", str(LINKER_SCRIPT), "-o", str(temporary), str(obj)])
    temporary.replace(output)
    return output


def build_all(names: Optional[Iterable[str]] = None) -> dict[str, Path]:
    """Build the named guests (default: all); return name -> ELF path."""
    selected = list(names) if names is not None else list(GUESTS)
    unknown = [name for name in selected if name not in GUESTS]
    if unknown:
        raise GuestBuildError(f"unknown guest(s) {', '.join(unknown)}: choose from {', '.join(GUESTS)}")
    return {name: build(GUESTS[name]) for name in selected}


def main(argv: list[str]) -> int:
    try:
        for name, path in build_all(argv or None).items():
            print(f"{name}\t{path}")
    except GuestBuildError as error:
        print(f"build.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
