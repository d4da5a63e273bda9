; privilege: ring transitions (SDM Vol. 3A 5.8, 6.12.1, 7.2).
;   IRET to ring 3 (CS 0x1B, SS 0x23); ring 3 reads its CPL from CS; INT 0x80
;   through a DPL-3 interrupt gate switches to the ring-0 stack from the TSS
;   (ESP0/SS0) and pushes the ring-3 SS:ESP; CLI, HLT and MOV CR3 in ring 3
;   raise #GP(0); INT 0x81 through a DPL-0 gate raises #GP(0x81 * 8 + 2).
;   IRET to an outer ring loads the null selector into a data segment register
;   whose DPL is below the new CPL (SDM Vol. 2A IRET), so ring 3 finds DS = 0
;   and loads its own. Ring 3 cannot write COM1 (IOPL 0): it records, ring 0 reports.
%include "lib.inc"

%define USER_STACK_TOP  0x380000

main:
        call idt_init
        call tss_install
        mov eax, 0x80
        mov edx, syscall_handler
        mov cl, GATE_INT32 | GATE_DPL3
        call set_gate
        mov eax, 0x82
        mov edx, return_to_ring0
        call set_gate                   ; DPL 3 as well
        ; 0x81 keeps its DPL-0 catch-all gate.

        mov [kernel_esp], esp
        push dword SEL_DATA32_R3        ; SS
        push dword USER_STACK_TOP       ; ESP
        push dword 0x00000002           ; EFLAGS: IOPL 0, IF 0
        push dword SEL_CODE32_R3        ; CS
        push dword ring3_entry          ; EIP
        iret

back_in_ring0:
        mov ax, cs
        movzx eax, ax
        CHECK "privilege.back_in_ring0", eax, SEL_CODE32
        CHECK "privilege.ring3_cpl", [r3_cpl], 3
        CHECK "privilege.iret_nulls_ring0_ds", [r3_ds_after_iret], 0
        CHECK "privilege.int80_handler_cpl", [sys_cpl], 0
        CHECK "privilege.int80_caller_cs", [sys_caller_cs], SEL_CODE32_R3
        CHECK "privilege.int80_caller_ss", [sys_caller_ss], SEL_DATA32_R3
        CHECK "privilege.int80_caller_esp", [sys_caller_esp], USER_STACK_TOP
        ; The CPU switched to ESP0 and pushed SS, ESP, EFLAGS, CS, EIP (5 dwords).
        CHECK "privilege.int80_stack_from_tss", [sys_esp], kernel_stack_top - 20
        CHECK "privilege.int80_return_value", [r3_syscall_result], 0x80801234
        CHECK "privilege.cli_gp_error", [r3_cli_error], 0
        CHECK "privilege.cli_gp_eip", [r3_cli_eip], ring3_entry.cli
        CHECK "privilege.cli_gp_from_ring3", [r3_cli_cs], SEL_CODE32_R3
        CHECK "privilege.hlt_gp", [r3_hlt_vector], 13
        CHECK "privilege.mov_cr3_gp", [r3_cr3_vector], 13
        CHECK "privilege.int_dpl0_gate_vector", [r3_int81_vector], 13
        CHECK "privilege.int_dpl0_gate_error", [r3_int81_error], 0x81 * 8 + 2
        ret

; --- ring 3 ------------------------------------------------------------------
ring3_entry:
        mov bx, ds
        movzx ebx, bx
        mov ax, SEL_DATA32_R3
        mov ds, ax
        mov es, ax
        mov [r3_ds_after_iret], ebx
        mov ax, cs
        and eax, 3
        mov [r3_cpl], eax
        mov eax, 0x1234
        int 0x80
        mov [r3_syscall_result], eax

        EXPECT_FAULT .after_cli
.cli:   cli
.after_cli:
        mov eax, [exc_vector]
        cmp eax, 13
        jne .cli_not_gp
        mov eax, [exc_error]
        mov [r3_cli_error], eax
        mov eax, [exc_eip]
        mov [r3_cli_eip], eax
        mov eax, [exc_cs]
        mov [r3_cli_cs], eax
.cli_not_gp:

        EXPECT_FAULT .after_hlt
        hlt
.after_hlt:
        mov eax, [exc_vector]
        mov [r3_hlt_vector], eax

        EXPECT_FAULT .after_cr3
        xor eax, eax
        mov cr3, eax
.after_cr3:
        mov eax, [exc_vector]
        mov [r3_cr3_vector], eax

        EXPECT_FAULT .after_int81
        int 0x81
.after_int81:
        mov eax, [exc_vector]
        mov [r3_int81_vector], eax
        mov eax, [exc_error]
        mov [r3_int81_error], eax

        int 0x82                        ; does not come back
        jmp $

; --- ring-0 handlers ---------------------------------------------------------
; Stack: EIP, CS, EFLAGS, ESP, SS of the caller.
syscall_handler:
        push ds
        push ebx
        mov bx, SEL_DATA32
        mov ds, bx
        lea ebx, [esp + 8]
        mov [sys_esp], ebx
        mov bx, cs
        and ebx, 3
        mov [sys_cpl], ebx
        mov ebx, [esp + 12]
        mov [sys_caller_cs], ebx
        mov ebx, [esp + 20]
        mov [sys_caller_esp], ebx
        mov ebx, [esp + 24]
        mov [sys_caller_ss], ebx
        or eax, 0x80800000
        pop ebx
        pop ds
        iret

return_to_ring0:
        mov ax, SEL_DATA32
        mov ds, ax
        mov es, ax
        mov esp, [kernel_esp]
        jmp back_in_ring0

        align 4
kernel_esp:         dd 0
r3_cpl:             dd -1
r3_ds_after_iret:   dd -1
r3_syscall_result:  dd 0
r3_cli_error:       dd -1
r3_cli_eip:         dd 0
r3_cli_cs:          dd 0
r3_hlt_vector:      dd -1
r3_cr3_vector:      dd -1
r3_int81_vector:    dd -1
r3_int81_error:     dd -1
sys_esp:            dd 0
sys_cpl:            dd -1
sys_caller_cs:      dd 0
sys_caller_esp:     dd 0
sys_caller_ss:      dd 0
