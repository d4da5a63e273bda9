; triple_fault: must end in a triple fault (shutdown), never in PASS.
; With an IDT limit of 0 no gate can be read: the #UD from UD2 becomes #GP
; (the gate lies beyond the limit, SDM Vol. 3A 6.10), delivering the #GP fails
; the same way and becomes #DF, and a fault while delivering #DF is a triple
; fault (SDM Vol. 3A 6.15, interrupt 8). QEMU with -no-reboot then exits 0;
; xvm exits 4 and prints "triple fault" and a register dump.
%include "lib.inc"

main:
        PRINT `triple_fault: loading an empty IDT and executing ud2\n`
        lidt [empty_idt]
        ud2
        FAIL "triple_fault.survived", "execution continued after ud2 with an empty IDT"
        ret

empty_idt:
        dw 0
        dd 0
