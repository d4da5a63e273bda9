; smp: starting an application processor the way a kernel does (SDM Vol. 3A
; 9.4.4, MP initialization with INIT-SIPI-SIPI; Linux arch/x86/kernel/smpboot.c).
;   The BSP enables its local APIC, copies a real-mode trampoline to 0x8000
;   and sends INIT then two STARTUP IPIs (vector 0x08: CS = 0x0800) to all
;   other processors. Each AP starts in real mode at 0x0800:0000, loads our
;   GDT, enters protected mode, reads its APIC ID and checks in with a locked
;   increment. Boot with 2 vCPUs.
%include "lib.inc"

%define LAPIC           0xFEE00000
%define LAPIC_ID        (LAPIC + 0x020)
%define LAPIC_SVR       (LAPIC + 0x0F0)
%define LAPIC_ICR_LOW   (LAPIC + 0x300)
%define LAPIC_ICR_HIGH  (LAPIC + 0x310)
%define ICR_BUSY        (1 << 12)
%define ICR_INIT_ALL_BUT_SELF    0x000C4500  ; shorthand 11, level assert, INIT
%define ICR_STARTUP_ALL_BUT_SELF 0x000C4600  ; shorthand 11, STARTUP | vector
%define TRAMPOLINE      0x8000
%define AP_STACKS       0x380000        ; 4 KiB per AP, below this address
%define EXPECTED_APS    1
%define T(x)            (TRAMPOLINE + (x) - trampoline)

main:
        mov eax, [LAPIC_ID]
        shr eax, 24
        mov [bsp_id], eax
        mov dword [LAPIC_SVR], 0x1FF    ; APIC software enable, spurious vector 0xFF
        mov esi, trampoline
        mov edi, TRAMPOLINE
        mov ecx, trampoline_end - trampoline
        rep movsb
        sgdt [T(ap_gdt)]

        mov eax, ICR_INIT_ALL_BUT_SELF
        call send_ipi
        mov ecx, 10000                  ; INIT-to-SIPI delay; virtual CPUs need no 10 ms
.delay: loop .delay
        mov eax, ICR_STARTUP_ALL_BUT_SELF | (TRAMPOLINE >> 12)
        call send_ipi
        mov eax, ICR_STARTUP_ALL_BUT_SELF | (TRAMPOLINE >> 12)
        call send_ipi                   ; the second SIPI of the protocol (ignored by a started AP)

        mov ecx, 1000000                ; bounded wait for the APs (a few seconds at 1 MIPS)
.wait:  cmp dword [ap_count], EXPECTED_APS
        jae .arrived
        loop .wait
.arrived:
        CHECK "smp.bsp_apic_id", [bsp_id], 0
        CHECK "smp.ap_checked_in", [ap_count], EXPECTED_APS
        CHECK "smp.ap_apic_id", [ap_id], 1
        CHECK "smp.ap_protected_mode_cs", [ap_cs], SEL_CODE32
        CHECK "smp.ap_started_in_real_mode", [T(ap_real_cs)], TRAMPOLINE >> 4
        ret

; send_ipi: EAX = ICR low (destination shorthand used: ICR high stays 0).
send_ipi:
        mov dword [LAPIC_ICR_HIGH], 0
        mov [LAPIC_ICR_LOW], eax
.busy:  test dword [LAPIC_ICR_LOW], ICR_BUSY
        jnz .busy
        ret

; The AP in protected mode, on a stack of its own.
ap_protected:
        mov ax, SEL_DATA32
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov eax, [LAPIC_ID]
        shr eax, 24
        mov ebx, eax
        shl eax, 12
        mov esp, AP_STACKS
        sub esp, eax
        mov [ap_id], ebx
        mov ax, cs
        movzx eax, ax
        mov [ap_cs], eax
        lock inc dword [ap_count]
.park:  cli
        hlt
        jmp .park

        align 4
bsp_id:     dd -1
ap_count:   dd 0
ap_id:      dd -1
ap_cs:      dd 0

; --- the real-mode trampoline, copied to TRAMPOLINE ----------------------------
        bits 16
trampoline:
        cli
        mov ax, cs
        mov ds, ax
        mov [ap_real_cs - trampoline], ax
        o32 lgdt [ap_gdt - trampoline]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp dword SEL_CODE32:ap_protected

        align 4
ap_real_cs: dd 0
ap_gdt:     dw 0                        ; filled by the BSP with SGDT
            dd 0
trampoline_end:
        bits 32
