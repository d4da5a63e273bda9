; user64: ring 3 in 64-bit mode, the way Linux user space runs.
;   IRETQ to a 64-bit ring-3 code segment; SYSCALL (EFER.SCE, STAR, LSTAR,
;   FMASK; SDM Vol. 2B SYSCALL): RCX = return RIP, R11 = RFLAGS, CS/SS from
;   STAR, flags masked by FMASK; SYSRET back to CS/SS from STAR[63:48] with
;   RFLAGS from R11; INT 0x80 through a DPL-3 gate onto RSP0 of a 64-bit TSS;
;   CLI in ring 3 is #GP(0); a user read of a supervisor page is #PF with
;   error code 5 (P | U/S).
%include "lib.inc"
%include "lib64.inc"

%define PML4        0x200000
%define PDPT        0x201000
%define PDIR        0x202000
%define PG_P        0x001
%define PG_RW       0x002
%define PG_US       0x004
%define PG_PS       0x080
%define SUPERVISOR_PAGE 0x600000        ; the 2 MiB page at 6 MiB is supervisor-only
%define USER_STACK  0x380000
%define MSR_STAR    0xC0000081
%define MSR_LSTAR   0xC0000082
%define MSR_FMASK   0xC0000084
%define EFER_SCE    (1 << 0)
%define RFLAGS_DF   0x400
%define RFLAGS_IF   0x200

main:
        mov edi, PML4
        mov ecx, 3 * 1024
        xor eax, eax
        rep stosd
        mov dword [PML4], PDPT | PG_P | PG_RW | PG_US
        mov dword [PDPT], PDIR | PG_P | PG_RW | PG_US
        mov dword [PDIR + 0], 0x000000 | PG_P | PG_RW | PG_US | PG_PS
        mov dword [PDIR + 8], 0x200000 | PG_P | PG_RW | PG_US | PG_PS
        mov dword [PDIR + 16], 0x400000 | PG_P | PG_RW | PG_US | PG_PS
        mov dword [PDIR + 24], SUPERVISOR_PAGE | PG_P | PG_RW | PG_PS
        mov eax, PML4
        jmp enter_long_mode

        bits 64
long_main:
        call idt64_init
        call tss64_install
        mov eax, 0x80
        lea rdx, [rel int80_handler]
        mov cl, GATE_INT32 | GATE_DPL3
        call set_gate64
        mov eax, 0x81
        lea rdx, [rel return_to_ring0]
        call set_gate64

        mov ecx, MSR_EFER
        rdmsr
        or eax, EFER_SCE
        wrmsr
        mov ecx, MSR_STAR
        xor eax, eax
        mov edx, (SEL_SYSRET_BASE << 16) | SEL_CODE64
        wrmsr
        mov ecx, MSR_LSTAR
        lea rax, [rel syscall_entry]
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, MSR_FMASK
        mov eax, RFLAGS_IF | RFLAGS_DF
        xor edx, edx
        wrmsr

        mov [rel kernel_rsp], rsp
        push qword SEL_DATA64_R3        ; SS
        push qword USER_STACK           ; RSP
        push qword 0x2                  ; RFLAGS: IOPL 0, IF 0
        push qword SEL_CODE64_R3        ; CS
        lea rax, [rel user_entry]
        push rax                        ; RIP
        iretq

back_in_ring0:
        mov ax, cs
        movzx eax, ax
        CHECK64 "user64.back_in_ring0", rax, SEL_CODE64
        CHECK64 "user64.ring3_cpl", [rel u_cpl], 3
        lea rbx, [rel user_entry.after_syscall]
        CHECK64 "user64.syscall_rcx", [rel k_sys_rcx], rbx
        mov rbx, [rel k_sys_r11]
        and ebx, RFLAGS_DF
        CHECK64 "user64.syscall_r11_rflags", rbx, RFLAGS_DF
        CHECK64 "user64.syscall_cs", [rel k_sys_cs], SEL_CODE64
        CHECK64 "user64.syscall_ss", [rel k_sys_ss], SEL_DATA64
        mov rbx, [rel k_sys_rflags]
        and ebx, RFLAGS_DF
        CHECK64 "user64.syscall_fmask", rbx, 0
        CHECK64 "user64.syscall_result", [rel u_sys_result], 0x105C
        CHECK64 "user64.sysret_cs", [rel u_cs_after_sysret], SEL_CODE64_R3
        CHECK64 "user64.sysret_ss", [rel u_ss_after_sysret], SEL_DATA64_R3
        mov rbx, [rel u_flags_after_sysret]
        and ebx, RFLAGS_DF
        CHECK64 "user64.sysret_rflags", rbx, RFLAGS_DF
        CHECK64 "user64.int80_caller_cs", [rel k_int80_cs], SEL_CODE64_R3
        CHECK64 "user64.int80_caller_ss", [rel k_int80_ss], SEL_DATA64_R3
        lea rbx, [rel kernel_stack_top - 40]
        CHECK64 "user64.int80_stack_from_tss", [rel k_int80_rsp], rbx
        CHECK64 "user64.int80_result", [rel u_int80_result], 0x81
        CHECK64 "user64.cli_gp_vector", [rel u_cli_vector], 13
        CHECK64 "user64.cli_gp_error", [rel u_cli_error], 0
        lea rbx, [rel user_entry.cli]
        CHECK64 "user64.cli_gp_rip", [rel u_cli_rip], rbx
        CHECK64 "user64.cli_gp_cs", [rel u_cli_cs], SEL_CODE64_R3
        CHECK64 "user64.supervisor_pf_vector", [rel u_pf_vector], 14
        CHECK64 "user64.supervisor_pf_error", [rel u_pf_error], 5
        CHECK64 "user64.supervisor_pf_cr2", [rel u_pf_cr2], SUPERVISOR_PAGE
        jmp finish64

; --- ring 3 ------------------------------------------------------------------
user_entry:
        mov ax, cs
        and eax, 3
        mov [rel u_cpl], rax
        mov eax, 0x5C
        std
        syscall
.after_syscall:
        pushfq
        pop rbx
        cld
        mov [rel u_flags_after_sysret], rbx
        mov [rel u_sys_result], rax
        mov ax, cs
        movzx eax, ax
        mov [rel u_cs_after_sysret], rax
        mov ax, ss
        movzx eax, ax
        mov [rel u_ss_after_sysret], rax

        mov eax, 0x80
        int 0x80
        mov [rel u_int80_result], rax

        EXPECT64 .after_cli
.cli:   cli
.after_cli:
        mov rax, [rel exc64_vector]
        mov [rel u_cli_vector], rax
        mov rax, [rel exc64_error]
        mov [rel u_cli_error], rax
        mov rax, [rel exc64_rip]
        mov [rel u_cli_rip], rax
        mov rax, [rel exc64_cs]
        mov [rel u_cli_cs], rax

        EXPECT64 .after_pf
        mov rax, [SUPERVISOR_PAGE]
.after_pf:
        mov rax, [rel exc64_vector]
        mov [rel u_pf_vector], rax
        mov rax, [rel exc64_error]
        mov [rel u_pf_error], rax
        mov rax, [rel exc64_cr2]
        mov [rel u_pf_cr2], rax
        int 0x81                        ; does not come back
        jmp $

; --- ring 0 ------------------------------------------------------------------
; SYSCALL does not switch stacks: this runs on the user stack (fine without SMAP).
syscall_entry:
        mov [rel k_sys_rcx], rcx
        mov [rel k_sys_r11], r11
        add rax, 0x1000
        mov rbx, rax
        mov ax, cs
        movzx eax, ax
        mov [rel k_sys_cs], rax
        mov ax, ss
        movzx eax, ax
        mov [rel k_sys_ss], rax
        pushfq
        pop rax
        mov [rel k_sys_rflags], rax
        mov rax, rbx
        o64 sysret

; Frame: RIP, CS, RFLAGS, RSP, SS.
int80_handler:
        mov [rel k_int80_rsp], rsp
        push rbx
        mov rbx, [rsp + 16]
        mov [rel k_int80_cs], rbx
        mov rbx, [rsp + 40]
        mov [rel k_int80_ss], rbx
        pop rbx
        inc rax
        iretq

return_to_ring0:
        mov rsp, [rel kernel_rsp]
        jmp back_in_ring0

        align 8
kernel_rsp:             dq 0
u_cpl:                  dq -1
u_sys_result:           dq 0
u_flags_after_sysret:   dq 0
u_cs_after_sysret:      dq 0
u_ss_after_sysret:      dq 0
u_int80_result:         dq 0
u_cli_vector:           dq -1
u_cli_error:            dq -1
u_cli_rip:              dq 0
u_cli_cs:               dq 0
u_pf_vector:            dq -1
u_pf_error:             dq -1
u_pf_cr2:               dq 0
k_sys_rcx:              dq 0
k_sys_r11:              dq 0
k_sys_cs:               dq 0
k_sys_ss:               dq 0
k_sys_rflags:           dq -1
k_int80_rsp:            dq 0
k_int80_cs:             dq 0
k_int80_ss:             dq 0
        bits 32
