; realmode: from protected mode down to real mode and back (SDM Vol. 3A 9.9.2).
;   Real-mode code must live below 1 MiB, so a blob is copied to RM_BASE and run
;   as RM_SEG:offset. The way down: far jump to a 16-bit code segment, load
;   16-bit data segments (64 KiB limits), LIDT the real-mode IVT, clear CR0.PE,
;   far jump to a real-mode CS. In real mode: segment arithmetic (seg * 16 +
;   offset), 16-bit offset wrap-around, 32-bit operands, INT through an IVT
;   entry we install (frame: IP, CS, FLAGS; IF and TF cleared), IRET. Back up:
;   set CR0.PE and far jump (32-bit offset) to our 32-bit code segment.
%include "lib.inc"

%define RM_BASE     0x8000
%define RM_SEG      (RM_BASE >> 4)
%define RM_SP       0x7FF0              ; SS:SP = RM_SEG:RM_SP, below 0x10000
%define RM_VECTOR   0x40
%define R(x)        ((x) - rm_blob)     ; offset of a blob label in RM_SEG
%define RESULT(x)   (RM_BASE + (x) - rm_blob) ; its physical address

main:
        mov esi, rm_blob
        mov edi, RM_BASE
        mov ecx, rm_blob_end - rm_blob
        rep movsb
        mov word [RM_VECTOR * 4], R(rm_int_handler)
        mov word [RM_VECTOR * 4 + 2], RM_SEG
        mov [saved_esp], esp
        lidt [real_mode_ivt]
        jmp SEL_CODE16:RESULT(pm16_entry)

pm_return:
        mov ax, SEL_DATA32
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, [saved_esp]
        mov eax, cr0
        and eax, 1
        CHECK "realmode.back_in_protected_mode", eax, 1
        mov eax, [RESULT(res_cr0)]
        and eax, 1
        CHECK "realmode.pe_was_clear", eax, 0
        movzx eax, word [RESULT(res_seg)]
        CHECK "realmode.segment_arithmetic", eax, 0xA55A
        movzx eax, word [RESULT(res_wrap)]
        CHECK "realmode.offset_wraps_at_64k", eax, 0x7E7E
        CHECK "realmode.operand_size_32", [RESULT(res_eax32)], 0x23456789
        movzx eax, word [RESULT(res_int_ax)]
        CHECK "realmode.int_handler_ran", eax, 0x1234 ^ 0xFFFF
        movzx eax, word [RESULT(res_frame_ip)]
        CHECK "realmode.int_frame_ip", eax, R(rm_after_int)
        movzx eax, word [RESULT(res_frame_cs)]
        CHECK "realmode.int_frame_cs", eax, RM_SEG
        movzx eax, word [RESULT(res_frame_flags)]
        and eax, 1
        CHECK "realmode.int_frame_flags_cf", eax, 1
        movzx eax, word [RESULT(res_handler_flags)]
        and eax, 0x0300                 ; IF | TF are cleared by INT
        CHECK "realmode.int_clears_if_tf", eax, 0
        movzx eax, word [RESULT(res_iret_cf)]
        CHECK "realmode.iret_restores_cf", eax, 1
        movzx eax, word [RESULT(res_sp_after)]
        CHECK "realmode.stack_balanced", eax, RM_SP
        ret

real_mode_ivt:
        dw 0x3FF
        dd 0

        align 4
saved_esp:      dd 0

; --- the blob copied below 1 MiB -----------------------------------------------
        bits 16
rm_blob:
pm16_entry:                             ; 16-bit protected mode, CS base 0
        mov ax, SEL_DATA16
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov eax, cr0
        and eax, ~1
        mov cr0, eax
        jmp RM_SEG:R(rm_entry)
rm_entry:
        mov ax, RM_SEG
        mov ds, ax
        mov ss, ax
        mov sp, RM_SP
        mov eax, cr0
        mov [R(res_cr0)], eax

        ; 0x1000:0x0010 and 0x1001:0x0000 are the same byte (0x10010).
        mov ax, 0x1000
        mov es, ax
        mov word [es:0x0010], 0xA55A
        mov ax, 0x1001
        mov es, ax
        mov ax, [es:0x0000]
        mov [R(res_seg)], ax

        ; A 16-bit effective address wraps: 0xFFFF + 2 = 0x0001.
        mov ax, 0x1000
        mov es, ax
        mov word [es:0x0001], 0x7E7E
        mov bx, 0xFFFF
        mov si, 2
        mov ax, [es:bx + si]
        mov [R(res_wrap)], ax

        mov eax, 0x12345678
        add eax, 0x11111111
        mov [R(res_eax32)], eax

        mov ax, 0x1234
        stc
        int RM_VECTOR
rm_after_int:
        setc bl
        movzx bx, bl
        mov [R(res_iret_cf)], bx
        mov [R(res_int_ax)], ax
        mov [R(res_sp_after)], sp

        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp dword SEL_CODE32:pm_return

rm_int_handler:
        push bp
        mov bp, sp
        mov bx, [bp + 2]
        mov [R(res_frame_ip)], bx
        mov bx, [bp + 4]
        mov [R(res_frame_cs)], bx
        mov bx, [bp + 6]
        mov [R(res_frame_flags)], bx
        pushf
        pop bx
        mov [R(res_handler_flags)], bx
        xor ax, 0xFFFF
        pop bp
        iret

        align 4
res_cr0:            dd -1
res_eax32:          dd 0
res_seg:            dw 0
res_wrap:           dw 0
res_int_ax:         dw 0
res_frame_ip:       dw 0
res_frame_cs:       dw 0
res_frame_flags:    dw 0
res_handler_flags:  dw 0xFFFF
res_iret_cf:        dw 0
res_sp_after:       dw 0
rm_blob_end:
        bits 32
