; exceptions: delivery of faults and traps through a 32-bit IDT (SDM Vol. 3A ch. 6).
; Each case checks the vector, the error code (Table 6-1) and the saved EIP:
; faults save the address of the faulting instruction, traps (INT3) the next
; one. The handler resumes with IRET; IRET's restore of EFLAGS is checked too.
; Paging stays off (#PF is covered by paging32 and paging64), so the guest
; also suits KVM backends that page only in long mode.
%include "lib.inc"

main:
        call idt_init

        ; #DE: DIV by zero is a fault, EIP points at the DIV.
        EXPECT_FAULT .after_de
        mov eax, 1
        xor edx, edx
        xor ecx, ecx
.de:    div ecx
.after_de:
        CHECK "exceptions.de_vector", [exc_vector], 0
        CHECK "exceptions.de_eip", [exc_eip], .de

        ; #UD from UD2.
        EXPECT_FAULT .after_ud
.ud:    ud2
.after_ud:
        CHECK "exceptions.ud_vector", [exc_vector], 6
        CHECK "exceptions.ud_eip", [exc_eip], .ud
        CHECK "exceptions.ud_cs", [exc_cs], SEL_CODE32

        ; #BP from INT3 is a trap: the saved EIP is the next instruction.
        EXPECT_FAULT .after_bp
        int3
.after_bp:
        CHECK "exceptions.bp_vector", [exc_vector], 3
        CHECK "exceptions.bp_eip", [exc_eip], .after_bp

        ; #GP: loading DS with a selector beyond the GDT limit; error code = selector index.
        EXPECT_FAULT .after_gp
        mov ax, 0x1234
.gp:    mov ds, ax
.after_gp:
        mov ax, ds
        movzx eax, ax
        CHECK "exceptions.gp_ds_unchanged", eax, SEL_DATA32
        CHECK "exceptions.gp_vector", [exc_vector], 13
        CHECK "exceptions.gp_error", [exc_error], 0x1234
        CHECK "exceptions.gp_eip", [exc_eip], .gp

        ; #GP(0): loading SS with the null selector (SDM Vol. 2B MOV, protected-mode exceptions).
        EXPECT_FAULT .after_gp0
        xor eax, eax
.gp0:   mov ss, ax
.after_gp0:
        CHECK "exceptions.gp_null_ss_error", [exc_error], 0
        CHECK "exceptions.gp_null_ss_eip", [exc_eip], .gp0

        ; Flags survive a round trip through a handler: set CF and DF, take #BP, check both.
        EXPECT_FAULT .after_flags
        stc
        std
        int3
.after_flags:
        pushfd
        cld
        pop eax
        and eax, 0x401                  ; DF | CF
        CHECK "exceptions.iret_restores_flags", eax, 0x401

        ; IRET from a frame we build: it loads EIP, CS and EFLAGS (with CF set) and pops 12 bytes.
        mov ebx, esp
        pushfd
        or dword [esp], 1
        push dword SEL_CODE32
        push dword .iret_target
        iret
        FAIL "exceptions.iret_jump", "iret did not jump"
.iret_target:
        setc al
        movzx eax, al
        CHECK "exceptions.iret_cf", eax, 1
        mov eax, ebx
        sub eax, esp
        CHECK "exceptions.iret_esp", eax, 0

        ; Nothing was left expected.
        CHECK "exceptions.no_pending_resume", [resume_eip], 0
        ret
