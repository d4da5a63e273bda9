; pio_loop: N byte OUTs to the POST-code port 0x80 (ignored by QEMU and by
; xvm, so each costs one PIO exit and nothing else), for bench/pio_exits.py.
; N comes from the command line token `count=N` (decimal), default 100000.
%include "lib.inc"

%define PIO_PORT        0x80
%define DEFAULT_COUNT   100000

main:
        mov ebx, DEFAULT_COUNT
        call mb_cmdline
        test eax, eax
        jz .counted
        mov esi, eax
        mov edi, count_key
        call strstr
        test eax, eax
        jz .counted
        ; Decimal digits after "count=".
        mov esi, eax
        xor ebx, ebx
.digit: movzx eax, byte [esi]
        sub eax, '0'
        cmp eax, 9
        ja .counted
        imul ebx, ebx, 10
        add ebx, eax
        inc esi
        jmp .digit
.counted:
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

count_key: db "count=", 0
