; cpu_bound: a fixed amount of CPU work per round, for bench/bt_mips.py.
; N rounds (command line token `count=N`, decimal; default 1), each:
;   integer: 1000 steps of xorshift32 with IMUL, ROL and DIV into an accumulator;
;   copy:    a 4 KiB source filled by a loop, copied with REP MOVSD, copied again
;            by a plain load/store loop, then a rotate-xor checksum of the copy;
;   sieve:   Eratosthenes below 8192 (REP STOSB to set the flags), primes counted.
; Every round does the same work, so each component's sum over the rounds must
; be N times its one-round value (the constants below, computed independently
; by a Python model of the same steps). The instruction count per round is
; fixed, which is what lets the benchmark credit other machines with bt's count.
%include "lib.inc"

%define DEFAULT_COUNT   1
%define INT_STEPS       1000
%define INT_SEED        0x12345678
%define INT_ROUND       0xA27AE8F3      ; one round's (accumulator XOR final state)
%define INT_DIVISOR     1000003
%define COPY_DWORDS     1024
%define COPY_ROUND      0x70884DFC      ; rotate-xor checksum of the source pattern
%define SIEVE_N         8192
%define SIEVE_PRIMES    1028            ; primes below 8192

main:
        mov ebx, DEFAULT_COUNT
        call cmdline_count
        mov [rounds], ebx
        PRINT "cpu_bound: count="
        mov eax, ebx
        call puthex
        call newline
        mov ecx, [rounds]
        test ecx, ecx
        jz .report
.round: push ecx
        call integer_work
        add [int_sum], eax
        call copy_work
        add [copy_sum], eax
        call sieve_work
        add [prime_sum], eax
        pop ecx
        dec ecx
        jnz .round
.report:
        imul ebx, [rounds], INT_ROUND
        CHECK "cpu_bound.integer", [int_sum], ebx
        imul ebx, [rounds], COPY_ROUND
        CHECK "cpu_bound.copy", [copy_sum], ebx
        imul ebx, [rounds], SIEVE_PRIMES
        CHECK "cpu_bound.sieve", [prime_sum], ebx
        ret

; integer_work: EAX = accumulator XOR state after INT_STEPS xorshift32 steps
; (Marsaglia 2003: x ^= x << 13; x ^= x >> 17; x ^= x << 5). Clobbers EBX-EDI.
integer_work:
        mov ebx, INT_SEED
        xor edi, edi
        mov ecx, INT_STEPS
        mov esi, INT_DIVISOR
.step:  mov eax, ebx
        shl eax, 13
        xor ebx, eax
        mov eax, ebx
        shr eax, 17
        xor ebx, eax
        mov eax, ebx
        shl eax, 5
        xor ebx, eax
        imul eax, ebx, 0x9E3779B1
        add edi, eax
        rol edi, 3
        mov eax, ebx
        xor edx, edx
        div esi
        add edi, edx                    ; + state mod INT_DIVISOR
        dec ecx
        jnz .step
        mov eax, edi
        xor eax, ebx
        ret

; copy_work: fill copy_src[i] = i * 0x01000193 + 0x5A5A5A5A, REP MOVSD it to
; copy_mid, copy copy_mid to copy_dst dword by dword, return the checksum of
; copy_dst (c = rol(c, 1) ^ dword). Clobbers EBX-EDI.
copy_work:
        cld
        mov edi, copy_src
        xor ecx, ecx
.fill:  imul eax, ecx, 0x01000193
        add eax, 0x5A5A5A5A
        mov [edi + ecx * 4], eax
        inc ecx
        cmp ecx, COPY_DWORDS
        jb .fill
        mov esi, copy_src
        mov edi, copy_mid
        mov ecx, COPY_DWORDS
        rep movsd
        mov esi, copy_mid
        mov edi, copy_dst
        mov ecx, COPY_DWORDS
.copy:  mov eax, [esi]
        mov [edi], eax
        add esi, 4
        add edi, 4
        dec ecx
        jnz .copy
        mov esi, copy_dst
        mov ecx, COPY_DWORDS
        xor eax, eax
.sum:   rol eax, 1
        xor eax, [esi]
        add esi, 4
        loop .sum
        ret

; sieve_work: EAX = number of primes below SIEVE_N (sieve of Eratosthenes over
; one byte per number). Clobbers EBX-EDI.
sieve_work:
        cld
        mov edi, sieve
        mov ecx, SIEVE_N
        mov al, 1
        rep stosb
        mov byte [sieve], 0
        mov byte [sieve + 1], 0
        mov ebx, 2                      ; candidate i
.outer: mov eax, ebx
        imul eax, ebx                   ; i * i
        cmp eax, SIEVE_N
        jae .count
        cmp byte [sieve + ebx], 0
        je .next
.strike:
        mov byte [sieve + eax], 0
        add eax, ebx
        cmp eax, SIEVE_N
        jb .strike
.next:  inc ebx
        jmp .outer
.count: xor eax, eax
        xor ecx, ecx
.tally: movzx edx, byte [sieve + ecx]
        add eax, edx
        inc ecx
        cmp ecx, SIEVE_N
        jb .tally
        ret


        section .bss
        alignb 4
rounds:         resd 1
int_sum:        resd 1
copy_sum:       resd 1
prime_sum:      resd 1
copy_src:       resd COPY_DWORDS
copy_mid:       resd COPY_DWORDS
copy_dst:       resd COPY_DWORDS
sieve:          resb SIEVE_N
