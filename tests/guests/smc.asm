; smc: self-modifying and cross-modifying code (SDM Vol. 3A 8.1.3). A store
; to code must be seen by the next execution of the modified instruction,
; including within the block being executed and in a loop; code copied to a
; fresh page runs, and rewriting that page changes what runs next.
; The guest's code is writable (paging off, flat segments).
%include "lib.inc"

%define CODE_PAGE   0x300000

main:
        ; 1. An instruction already executed, patched, then executed again (a loop).
        xor ebx, ebx                    ; pass number
.again:
.patch1:
        mov eax, 0x11111111             ; B8 imm32: the immediate is at .patch1 + 1
        test ebx, ebx
        jnz .second
        mov [first_value], eax
        mov dword [.patch1 + 1], 0x22222222
        inc ebx
        jmp .again
.second:
        mov ecx, eax                    ; CHECK clobbers EAX, EDX, ESI
        CHECK "smc.first_execution", [first_value], 0x11111111
        CHECK "smc.patched_reexecution", ecx, 0x22222222

        ; 2. Patch the instruction that follows the store, in the same straight-line block.
        mov dword [.patch2 + 1], 0x33333333
.patch2:
        mov eax, 0x11111111
        CHECK "smc.same_block_ahead", eax, 0x33333333

        ; 3. A loop whose body rewrites its own ADD immediate each iteration:
        ;    sum of imm8 = 0 + 1 + ... + 9 = 45 only if every patch is seen.
        xor eax, eax
        xor ecx, ecx
.loop:
.patch3:
        add eax, byte 0                 ; 83 C0 ib: imm8 at .patch3 + 2
        inc ecx
        mov [.patch3 + 2], cl
        cmp ecx, 10
        jb .loop
        CHECK "smc.loop_self_patch", eax, 45

        ; 4. Code copied to another page, called, overwritten, called again.
        mov esi, snippet_a
        mov edi, CODE_PAGE
        mov ecx, snippet_a_end - snippet_a
        rep movsb
        call CODE_PAGE
        CHECK "smc.copied_code", eax, 0xA5A5A5A5
        mov esi, snippet_b
        mov edi, CODE_PAGE
        mov ecx, snippet_b_end - snippet_b
        rep movsb
        call CODE_PAGE
        CHECK "smc.overwritten_code", eax, 0x5A5A5A5B
        ; Change one immediate byte only.
        mov byte [CODE_PAGE + 1], 0x00
        call CODE_PAGE
        CHECK "smc.one_byte_patch", eax, 0x5A5A5A01
        ; Copy the routine to the next page and run both (no stale aliasing between pages).
        mov esi, snippet_a
        mov edi, CODE_PAGE + 0x1000
        mov ecx, snippet_a_end - snippet_a
        rep movsb
        call CODE_PAGE + 0x1000
        mov ebx, eax
        call CODE_PAGE
        mov ecx, eax
        CHECK "smc.second_page", ebx, 0xA5A5A5A5
        CHECK "smc.first_page_kept", ecx, 0x5A5A5A01
        ret

snippet_a:
        mov eax, 0xA5A5A5A5
        ret
snippet_a_end:
snippet_b:
        mov eax, 0x5A5A5A5A
        inc eax
        ret
snippet_b_end:

        align 4
first_value:    dd 0
