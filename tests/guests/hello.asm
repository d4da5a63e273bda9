; hello: the smallest useful guest. Checks what a multiboot loader must hand over
; (Multiboot 0.6.96 section 3.2/3.3): the magic in EAX, memory sizes, the command line.
; Run with the command line containing "check=cmdline".
%include "lib.inc"

main:
        PRINT `hello from multiboot\n`
        CHECK "hello.magic", [mb_magic], MB_BOOT_MAGIC

        mov ebx, [mb_info]
        mov eax, [ebx + MBI_FLAGS]
        and eax, MBI_FLAG_MEM
        CHECK "hello.mem_flag", eax, MBI_FLAG_MEM
        ; mem_upper: KiB of contiguous RAM from 1 MiB; a 64 MiB guest has close to 63 MiB.
        PRINT "mem_upper="
        mov eax, [ebx + MBI_MEM_UPPER]
        call puthex
        call newline
        xor eax, eax
        cmp dword [ebx + MBI_MEM_UPPER], 0
        seta al
        CHECK "hello.mem_upper_nonzero", eax, 1

        mov eax, [ebx + MBI_FLAGS]
        and eax, MBI_FLAG_CMDLINE
        CHECK "hello.cmdline_flag", eax, MBI_FLAG_CMDLINE
        call mb_cmdline
        test eax, eax
        jz .no_cmdline
        PRINT "cmdline="
        mov esi, eax
        call puts
        call newline
        mov edi, needle
        call strstr
.no_cmdline:
        xor edx, edx
        test eax, eax
        setnz dl
        CHECK "hello.cmdline", edx, 1
        ret

needle: db "check=cmdline", 0
