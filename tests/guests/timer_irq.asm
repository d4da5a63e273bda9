; timer_irq: external interrupts end to end, as a kernel first meets them.
;   8259A PIC pair initialised (ICW1-ICW4: vectors 0x20/0x28, cascade on IRQ2),
;   8254 PIT channel 0 in mode 2 at ~1 kHz; the count read back through the
;   latch command goes down; IRQ0 arrives as vector 0x20 and wakes HLT, again
;   after each EOI (KVM's PIT re-injects ticks lost while IF was 0, so a wait
;   may see more than one: counts are checked as "at least"). Then the local APIC at 0xFEE00000 (SDM Vol. 3A 11.5.4):
;   software-enabled through the SVR, its timer periodic on vector 0x30; the
;   current count goes down; interrupts arrive and wake HLT after each EOI.
;   Model: kvmtool tests/pit/tick.S.
%include "lib.inc"

%define PIT_CH0         0x40
%define PIT_MODE        0x43
%define PIT_DIVISOR     1193            ; 1.193182 MHz / 1193 = ~1 kHz
%define IRQ0_VECTOR     PIC_VECTOR_BASE
%define LAPIC           0xFEE00000
%define LAPIC_EOI       (LAPIC + 0x0B0)
%define LAPIC_SVR       (LAPIC + 0x0F0)
%define LAPIC_LVT_TIMER (LAPIC + 0x320)
%define LAPIC_TMR_INIT  (LAPIC + 0x380)
%define LAPIC_TMR_CUR   (LAPIC + 0x390)
%define LAPIC_TMR_DIV   (LAPIC + 0x3E0)
%define LAPIC_VECTOR    0x30
%define TICKS           5

main:
        call idt_init
        mov eax, IRQ0_VECTOR
        mov edx, irq0_handler
        mov cl, GATE_INT32
        call set_gate
        mov eax, LAPIC_VECTOR
        mov edx, lapic_handler
        call set_gate
        mov eax, 0xFF                   ; the APIC's spurious vector: counted, not an error
        mov edx, spurious_handler
        call set_gate
        mov eax, IRQ0_VECTOR + 7        ; the 8259A's spurious IRQ7: likewise
        call set_gate

        mov ax, 0xFFFE                  ; unmask IRQ0 only
        call pic_init
        in al, PIC1_DATA
        movzx eax, al
        CHECK "timer_irq.pic_imr", eax, 0xFE

        ; PIT channel 0, lobyte/hibyte, mode 2 (rate generator).
        mov al, 0x34
        out PIT_MODE, al
        mov al, PIT_DIVISOR & 0xFF
        out PIT_CH0, al
        mov al, PIT_DIVISOR >> 8
        out PIT_CH0, al

        ; The count goes down between two latched reads (8254 datasheet: counter latch command).
        call pit_read
        mov ebx, eax
        mov ecx, 2000
.spin:  loop .spin
        call pit_read
        xor edx, edx
        cmp eax, ebx
        setne dl
        CHECK "timer_irq.pit_counts", edx, 1
        xor edx, edx
        cmp eax, PIT_DIVISOR
        setbe dl
        CHECK "timer_irq.pit_count_in_range", edx, 1

        ; IRQ0 ticks wake HLT, one per EOI.
        mov dword [pit_ticks], 0
.wait_pit:
        sti
        hlt
        cli
        cmp dword [pit_ticks], TICKS
        jb .wait_pit
        xor edx, edx
        cmp dword [pit_ticks], TICKS
        setae dl
        CHECK "timer_irq.pit_ticks", edx, 1
        CHECK "timer_irq.pit_vector_only", [other_irqs], 0

        ; Mask the PIC, then the local APIC timer.
        mov al, 0xFF
        out PIC1_DATA, al
        mov eax, [pit_ticks]
        mov [pit_ticks_masked], eax
        mov dword [LAPIC_SVR], 0x1FF    ; APIC software enable, spurious vector 0xFF
        mov dword [LAPIC_TMR_DIV], 0xB  ; divide by 1
        mov dword [LAPIC_LVT_TIMER], (1 << 17) | LAPIC_VECTOR   ; periodic
        mov dword [LAPIC_TMR_INIT], 200000
        mov eax, [LAPIC_TMR_CUR]
        mov ecx, 2000
.spin2: loop .spin2
        mov ebx, [LAPIC_TMR_CUR]
        xor edx, edx
        cmp ebx, eax
        setb dl
        CHECK "timer_irq.lapic_counts_down", edx, 1
.wait_lapic:
        sti
        hlt
        cli
        cmp dword [lapic_ticks], TICKS
        jb .wait_lapic
        mov dword [LAPIC_LVT_TIMER], (1 << 16) | LAPIC_VECTOR   ; masked: stop
        xor edx, edx
        cmp dword [lapic_ticks], TICKS
        setae dl
        CHECK "timer_irq.lapic_ticks", edx, 1
        mov ebx, [pit_ticks_masked]
        CHECK "timer_irq.pit_masked", [pit_ticks], ebx
        ret

; pit_read: EAX = channel 0 count (latch command, then low and high byte).
pit_read:
        mov al, 0x00
        out PIT_MODE, al
        in al, PIT_CH0
        mov ah, al
        in al, PIT_CH0
        xchg al, ah
        movzx eax, ax
        ret

irq0_handler:
        push eax
        inc dword [pit_ticks]
        mov al, PIC_EOI
        out PIC1_CMD, al
        pop eax
        iret

lapic_handler:
        inc dword [lapic_ticks]
        mov dword [LAPIC_EOI], 0
        iret

spurious_handler:
        inc dword [other_irqs]
        iret

        align 4
pit_ticks:      dd 0
pit_ticks_masked: dd 0
lapic_ticks:    dd 0
other_irqs:     dd 0
