; long_mode: the switch to 64-bit mode (SDM Vol. 3A 9.8.5) and a few 64-bit checks.
;   4-level page tables identity-mapping 0-8 MiB with 2 MiB pages, CR4.PAE,
;   EFER.LME, CR0.PG, a far jump to a 64-bit code segment; then 64-bit
;   multiply, shifts, R8-R15, RIP-relative addressing and EFER.LMA, all
;   reported from 64-bit code.
%include "lib.inc"
%include "lib64.inc"

%define PML4        0x200000
%define PDPT        0x201000
%define PDIR        0x202000
%define PG_P        0x001
%define PG_RW       0x002
%define PG_PS       0x080

main:
        mov edi, PML4
        mov ecx, 3 * 1024
        xor eax, eax
        rep stosd
        mov dword [PML4], PDPT | PG_P | PG_RW
        mov dword [PDPT], PDIR | PG_P | PG_RW
        mov dword [PDIR + 0], 0x000000 | PG_P | PG_RW | PG_PS
        mov dword [PDIR + 8], 0x200000 | PG_P | PG_RW | PG_PS
        mov dword [PDIR + 16], 0x400000 | PG_P | PG_RW | PG_PS
        mov dword [PDIR + 24], 0x600000 | PG_P | PG_RW | PG_PS
        mov eax, PML4
        jmp enter_long_mode

        bits 64
long_main:
        ; We run with the 64-bit code segment loaded.
        mov ax, cs
        movzx eax, ax
        CHECK64 "long_mode.entered", rax, SEL_CODE64

        ; EFER.LMA is set by the processor once paging is on with LME=1.
        mov ecx, MSR_EFER
        rdmsr
        and eax, EFER_LMA
        CHECK64 "long_mode.efer_lma", rax, EFER_LMA

        ; 64-bit unsigned multiply: (2^64 - 1) * 3 = 2 * 2^64 + (2^64 - 3).
        mov rax, -1
        mov rcx, 3
        mul rcx
        mov rbx, rax
        mov rcx, rdx
        mov r12, 0xFFFFFFFFFFFFFFFD
        CHECK64 "long_mode.mul64_low", rbx, r12
        CHECK64 "long_mode.mul64_high", rcx, 2

        ; IMUL r64, r/m64, imm32 with a sign-extended immediate.
        mov rbx, 0x123456789
        imul rbx, rbx, -16
        mov r12, -0x1234567890
        CHECK64 "long_mode.imul64_imm", rbx, r12

        ; RIP-relative load of a 64-bit constant.
        mov rbx, [rel constant]
        mov r12, 0x0123456789ABCDEF
        CHECK64 "long_mode.rip_relative", rbx, r12

        ; R8-R15 and 64-bit shifts and carries across bit 31.
        mov r8, 0xFFFFFFFF
        mov r15, 1
        add r8, r15
        shl r8, 20
        mov r12, 1 << 52
        CHECK64 "long_mode.r8_r15_shift", r8, r12

        ; A 32-bit operation zero-extends into the 64-bit register (SDM Vol. 1 3.4.1.1).
        mov rbx, -1
        mov ebx, 0x12345678
        CHECK64 "long_mode.zero_extend32", rbx, 0x12345678

        ; PUSH/POP move RSP by 8.
        mov rbx, rsp
        push rax
        pop rcx
        sub rbx, rsp
        CHECK64 "long_mode.push_pop", rbx, 0
        jmp finish64

        align 8
constant:   dq 0x0123456789ABCDEF
        bits 32
