; long_mode: the switch to 64-bit mode (SDM Vol. 3A 9.8.5) and a few 64-bit checks.
;   4-level page tables identity-mapping 0-8 MiB with 2 MiB pages, CR4.PAE,
;   EFER.LME, CR0.PG, a far jump to a 64-bit code segment; then 64-bit
;   multiply, shifts, R8-R15, RIP-relative addressing and EFER.LMA, all
;   reported from 64-bit code with its own small COM1 printer.
%include "lib.inc"

%define PML4        0x200000
%define PDPT        0x201000
%define PDIR        0x202000
%define PG_P        0x001
%define PG_RW       0x002
%define PG_PS       0x080
%define MSR_EFER    0xC0000080
%define EFER_LME    (1 << 8)
%define EFER_LMA    (1 << 10)
%define CR4_PAE     (1 << 5)

main:
        mov edi, PML4
        mov ecx, 3 * 1024
        xor eax, eax
        rep stosd
        mov dword [PML4], PDPT | PG_P | PG_RW
        mov dword [PDPT], PDIR | PG_P | PG_RW
        mov dword [PDIR + 0], 0x000000 | PG_P | PG_RW | PG_PS
        mov dword [PDIR + 8], 0x200000 | PG_P | PG_RW | PG_PS
        mov dword [PDIR + 16], 0x400000 | PG_P | PG_RW | PG_PS
        mov dword [PDIR + 24], 0x600000 | PG_P | PG_RW | PG_PS

        mov eax, cr4
        or eax, CR4_PAE
        mov cr4, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, MSR_EFER
        rdmsr
        or eax, EFER_LME
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax                    ; now in compatibility mode (IA-32e, 32-bit CS)
        jmp SEL_CODE64:long_entry

        bits 64
long_entry:
        mov ax, SEL_DATA32
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, stack_top              ; a 32-bit write zero-extends into RSP
        ; We run with the 64-bit code segment loaded.
        mov ax, cs
        movzx eax, ax
        mov edx, SEL_CODE64
        lea rsi, [rel n_entered]
        call check64

        ; EFER.LMA is set by the processor once paging is on with LME=1.
        mov ecx, MSR_EFER
        rdmsr
        and eax, EFER_LMA
        mov edx, EFER_LMA
        lea rsi, [rel n_lma]
        call check64

        ; 64-bit unsigned multiply: (2^64 - 1) * 3 = 2 * 2^64 + (2^64 - 3).
        mov rax, -1
        mov rcx, 3
        mul rcx
        mov r12, rdx
        mov rdx, 0xFFFFFFFFFFFFFFFD
        lea rsi, [rel n_mul_lo]
        call check64
        mov rax, r12
        mov rdx, 2
        lea rsi, [rel n_mul_hi]
        call check64

        ; IMUL r64, r/m64, imm32 with a sign-extended immediate.
        mov rbx, 0x123456789
        imul rax, rbx, -16
        mov rdx, -0x1234567890
        lea rsi, [rel n_imul]
        call check64

        ; RIP-relative load of a 64-bit constant.
        mov rax, [rel constant]
        mov rdx, 0x0123456789ABCDEF
        lea rsi, [rel n_riprel]
        call check64

        ; R8-R15 and 64-bit shifts and carries across bit 31.
        mov r8, 0xFFFFFFFF
        mov r15, 1
        add r8, r15
        mov rax, r8
        shl rax, 20
        mov rdx, 1 << 52
        lea rsi, [rel n_r8_shift]
        call check64

        ; A 32-bit operation zero-extends into the 64-bit register (SDM Vol. 1 3.4.1.1).
        mov rax, -1
        mov eax, 0x12345678
        mov rdx, 0x12345678
        lea rsi, [rel n_zext]
        call check64

        ; PUSH/POP move RSP by 8.
        mov rbx, rsp
        push rax
        pop rcx
        sub rbx, rsp
        mov rax, rbx
        xor edx, edx
        lea rsi, [rel n_stack]
        call check64

        ; Report: failure count to the debug-exit port, from 64-bit code.
        mov eax, [rel fail_count]
        cmp eax, 255
        jbe .out
        mov eax, 255
.out:   out DEBUG_EXIT_PORT, al
.halt:  hlt
        jmp .halt

putc64:
        push rdx
        push rax
        mov dx, COM1_LSR
.wait:  in al, dx
        test al, LSR_THRE
        jz .wait
        pop rax
        mov dx, COM1
        out dx, al
        pop rdx
        ret

puts64:
        push rax
        push rsi
.next:  lodsb
        test al, al
        jz .done
        call putc64
        jmp .next
.done:  pop rsi
        pop rax
        ret

puthex64:
        push rcx
        push rdx
        mov rdx, rax
        mov ecx, 16
.digit: rol rdx, 4
        mov al, dl
        and al, 0x0F
        add al, '0'
        cmp al, '9'
        jbe .emit
        add al, 'a' - '9' - 1
.emit:  call putc64
        loop .digit
        pop rdx
        pop rcx
        ret

; check64: RSI = name, RAX = got, RDX = want.
check64:
        push rsi
        cmp rax, rdx
        jne .fail
        lea rsi, [rel str_pass]
        call puts64
        pop rsi
        call puts64
        jmp .nl
.fail:  inc dword [rel fail_count]
        lea rsi, [rel str_fail]
        call puts64
        pop rsi
        call puts64
        lea rsi, [rel str_got]
        call puts64
        call puthex64
        lea rsi, [rel str_want]
        call puts64
        mov rax, rdx
        call puthex64
.nl:    mov al, 10
        jmp putc64

        align 8
constant:   dq 0x0123456789ABCDEF
n_entered:  db "long_mode.entered", 0
n_lma:      db "long_mode.efer_lma", 0
n_mul_lo:   db "long_mode.mul64_low", 0
n_mul_hi:   db "long_mode.mul64_high", 0
n_imul:     db "long_mode.imul64_imm", 0
n_riprel:   db "long_mode.rip_relative", 0
n_r8_shift: db "long_mode.r8_r15_shift", 0
n_zext:     db "long_mode.zero_extend32", 0
n_stack:    db "long_mode.push_pop", 0
