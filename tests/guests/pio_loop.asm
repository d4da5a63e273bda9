; pio_loop: N byte OUTs to the POST-code port 0x80 (ignored by QEMU and by
; xvm, so each costs one PIO exit and nothing else), for bench/pio_exits.py.
; N comes from the command line token `count=N` (decimal), default 100000.
%include "lib.inc"

%define PIO_PORT        0x80
%define DEFAULT_COUNT   100000

main:
        mov ebx, DEFAULT_COUNT
        call cmdline_count
        PRINT "pio_loop: count="
        mov eax, ebx
        call puthex
        call newline
        mov ecx, ebx
        xor edi, edi                    ; OUTs done
        test ecx, ecx
        jz .done
        mov dx, PIO_PORT
.loop:  out dx, al
        inc edi
        dec ecx
        jnz .loop
.done:
        CHECK "pio_loop.count", edi, ebx
        ret

