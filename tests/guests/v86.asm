; v86: virtual-8086 mode (SDM Vol. 3A ch. 20) with a ring-0 monitor.
;   IRET with EFLAGS.VM=1 (and ES, DS, FS, GS, SS:SP on the frame) enters
;   virtual-8086 mode; segment loads there follow real-mode rules. With
;   IOPL 0, CLI and INT n raise #GP(0) into the monitor (the #GP handler,
;   on the ring-0 stack from the TSS), which sees the VM bit and the v86
;   segment registers in its frame, emulates CLI and INT 0x20 (AX += 1), and
;   on INT 0x21 leaves virtual-8086 mode for good.
%include "lib.inc"

%define V86_BASE    0x9000
%define V86_SEG     (V86_BASE >> 4)
%define V86_SP      0x0FF0
%define V(x)        ((x) - v86_blob)
%define RESULT(x)   (V86_BASE + (x) - v86_blob)
%define EFLAGS_VM   (1 << 17)
; Monitor frame after PUSHAD (8 dwords): error, EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS.
%define F_EAX       28
%define F_ERROR     32
%define F_EIP       36
%define F_CS        40
%define F_EFLAGS    44
%define F_SS        52
%define F_DS        60

main:
        call idt_init
        call tss_install
        mov eax, 13
        mov edx, v86_monitor
        mov cl, GATE_INT32
        call set_gate
        mov esi, v86_blob
        mov edi, V86_BASE
        mov ecx, v86_blob_end - v86_blob
        rep movsb

        mov [kernel_esp], esp
        push dword V86_SEG              ; GS
        push dword V86_SEG              ; FS
        push dword V86_SEG              ; DS
        push dword V86_SEG              ; ES
        push dword V86_SEG              ; SS
        push dword V86_SP               ; ESP
        push dword EFLAGS_VM | 0x2      ; EFLAGS: VM, IOPL 0, IF 0
        push dword V86_SEG              ; CS
        push dword V(v86_entry)         ; EIP
        iret

left_v86:
        CHECK "v86.arithmetic", [RESULT(res_add)], 0x2468
        CHECK "v86.segment_arithmetic", [RESULT(res_seg)], 0xBEEF
        CHECK "v86.cs_is_paragraph", [RESULT(res_cs)], V86_SEG
        CHECK "v86.cli_trapped", [cli_count], 1
        CHECK "v86.int20_emulated", [RESULT(res_int20)], 0x5556
        CHECK "v86.gp_error_zero", [gp_error_or], 0
        CHECK "v86.monitor_entries", [gp_count], 3
        CHECK "v86.handler_ds_null", [handler_ds], 0
        CHECK "v86.frame_vm_flag", [frame_vm], EFLAGS_VM
        CHECK "v86.frame_ds", [frame_ds], V86_SEG
        CHECK "v86.frame_ss", [frame_ss], V86_SEG
        ; The CPU switched to ESP0 and pushed GS..EIP plus the error code (10 dwords).
        CHECK "v86.monitor_stack_from_tss", [monitor_esp], kernel_stack_top - 40
        ret

; #GP handler: the virtual-8086 monitor.
v86_monitor:
        pushad
        mov eax, ds
        mov bx, SEL_DATA32
        mov ds, bx
        mov es, bx
        movzx eax, ax
        mov [handler_ds], eax
        lea eax, [esp + F_ERROR]
        mov [monitor_esp], eax
        inc dword [gp_count]
        mov eax, [esp + F_ERROR]
        or [gp_error_or], eax
        mov eax, [esp + F_EFLAGS]
        and eax, EFLAGS_VM
        jz .not_v86
        ; The faulting instruction is at CS * 16 + IP.
        movzx ebx, word [esp + F_CS]
        shl ebx, 4
        movzx ecx, word [esp + F_EIP]
        add ebx, ecx
        mov al, [ebx]
        cmp al, 0xFA                    ; CLI
        je .cli
        cmp al, 0xCD                    ; INT imm8
        jne .unknown
        mov al, [ebx + 1]
        cmp al, 0x20
        je .int20
        cmp al, 0x21
        je .int21
.unknown:
        FAIL "v86.monitor", "unexpected #GP in virtual-8086 mode"
        jmp finish
.not_v86:
        FAIL "v86.monitor", "#GP outside virtual-8086 mode"
        jmp finish
.cli:   inc dword [cli_count]
        add dword [esp + F_EIP], 1
        jmp .resume
.int20: inc word [esp + F_EAX]
        add dword [esp + F_EIP], 2
.resume:
        popad
        add esp, 4                      ; error code
        iret
.int21: mov eax, [esp + F_EFLAGS]
        and eax, EFLAGS_VM
        mov [frame_vm], eax
        mov eax, [esp + F_DS]
        mov [frame_ds], eax
        mov eax, [esp + F_SS]
        mov [frame_ss], eax
        mov ax, SEL_DATA32
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, [kernel_esp]
        jmp left_v86

        align 4
kernel_esp:     dd 0
gp_count:       dd 0
gp_error_or:    dd 0
cli_count:      dd 0
handler_ds:     dd -1
monitor_esp:    dd 0
frame_vm:       dd 0
frame_ds:       dd 0
frame_ss:       dd 0

; --- the blob run in virtual-8086 mode at V86_SEG:0 ---------------------------
        bits 16
v86_blob:
v86_entry:
        mov ax, 0x1234
        add ax, ax
        mov [V(res_add)], ax
        ; 0x2000:0x0010 and 0x2001:0x0000 are the same byte.
        mov bx, 0x2000
        mov es, bx
        mov word [es:0x0010], 0xBEEF
        mov bx, 0x2001
        mov es, bx
        mov ax, [es:0]
        mov [V(res_seg)], ax
        mov ax, cs
        mov [V(res_cs)], ax
        cli
        mov ax, 0x5555
        int 0x20
        mov [V(res_int20)], ax
        int 0x21
        jmp $

        align 4
res_add:    dd 0
res_seg:    dd 0
res_cs:     dd 0
res_int20:  dd 0
v86_blob_end:
        bits 32
