; x87: floating point as user space meets it (SDM Vol. 1 ch. 8): FNINIT's
; control word, FADD, FIMUL, FSQRT, FCOMPP with the condition codes read
; through FNSTSW, FNSTCW.
%include "lib.inc"

main:
        call idt_init
        call fpu_enable
        fninit

        ; 1 + 1, 1234 * 56, sqrt(144), and a compare through the status word.
        fld1
        fld1
        faddp
        fistp dword [result]
        CHECK "x87.add", [result], 2
        fild dword [i1234]
        fimul dword [i56]
        fistp dword [result]
        CHECK "x87.imul", [result], 1234 * 56
        fild dword [i144]
        fsqrt
        fistp dword [result]
        CHECK "x87.sqrt", [result], 12
        fild dword [i56]
        fild dword [i144]               ; ST0 = 144, ST1 = 56
        fcompp                          ; 144 > 56: C3 = C2 = C0 = 0
        fnstsw ax
        and eax, 0x4500
        CHECK "x87.compare", eax, 0
        fnstcw [control]
        movzx eax, word [control]
        CHECK "x87.default_cw", eax, 0x037F
        ret

i1234:      dd 1234
i56:        dd 56
i144:       dd 144
result:     dd 0
control:    dw 0
