; rtc_irq: the MC146818 RTC's periodic interrupt, as Linux's rtc-cmos driver uses it.
;   8259A pair initialised with IRQ2 (cascade) and IRQ8 unmasked; register A rate 6
;   (1024 Hz, 32.768 kHz time base), register B PIE set. IRQ8 arrives as vector
;   PIC_VECTOR_BASE + 8 and wakes HLT; the handler reads register C (IRQF and PF set;
;   reading it lowers the line) and sends EOI to both PICs, so the next period raises
;   IRQ8 again. With PIE cleared no interrupt arrives any more (after one that the PIC
;   may have latched just before: the guest lets it through first).
;   Datasheet: MC146818A registers A-C; Linux drivers/rtc/rtc-cmos.c cmos_interrupt.
%include "lib.inc"

%define CMOS_INDEX      0x70
%define CMOS_DATA       0x71
%define RTC_REG_A       0x0A
%define RTC_REG_B       0x0B
%define RTC_REG_C       0x0C
%define RTC_RATE_1024HZ 0x26            ; divider 010 (32.768 kHz), rate 6
%define RTC_PIE         0x40
%define RTC_IRQF_PF     0xC0
%define IRQ8_VECTOR     (PIC_VECTOR_BASE + 8)
%define TICKS           8
%define QUIET_LOOPS     200000

main:
        call idt_init
        mov eax, IRQ8_VECTOR
        mov edx, irq8_handler
        mov cl, GATE_INT32
        call set_gate
        mov eax, PIC_VECTOR_BASE + 7    ; the 8259A pair's spurious IRQ7 and IRQ15: counted
        mov edx, other_handler
        call set_gate
        mov eax, PIC_VECTOR_BASE + 15
        call set_gate

        mov ax, 0xFEFB                  ; master: IRQ2 (cascade); slave: IRQ8
        call pic_init
        in al, PIC2_DATA
        movzx eax, al
        CHECK "rtc_irq.pic_imr", eax, 0xFE

        mov al, RTC_REG_A
        mov ah, RTC_RATE_1024HZ
        call cmos_write
        mov al, RTC_REG_A
        call cmos_read
        and eax, 0x7F                   ; bit 7 is UIP
        CHECK "rtc_irq.reg_a", eax, RTC_RATE_1024HZ
        mov al, RTC_REG_C               ; clear stale flags before enabling
        call cmos_read
        mov al, RTC_REG_B
        call cmos_read
        or al, RTC_PIE
        mov ah, al
        mov al, RTC_REG_B
        call cmos_write

.wait:  sti
        hlt
        cli
        cmp dword [ticks], TICKS
        jb .wait
        xor edx, edx
        cmp dword [ticks], TICKS
        setae dl
        CHECK "rtc_irq.ticks", edx, 1
        mov eax, [flags_and]
        and eax, RTC_IRQF_PF
        CHECK "rtc_irq.reg_c_irqf_pf", eax, RTC_IRQF_PF
        CHECK "rtc_irq.vector_only", [other_irqs], 0

        ; PIE off, flags read away: the line stays low while interrupts are enabled.
        mov al, RTC_REG_B
        call cmos_read
        and al, ~RTC_PIE
        mov ah, al
        mov al, RTC_REG_B
        call cmos_write
        mov al, RTC_REG_C
        call cmos_read
        mov ecx, QUIET_LOOPS            ; an edge the PIC latched before PIE went off arrives here
        sti
.settle: loop .settle
        cli
        mov ebx, [ticks]
        mov ecx, QUIET_LOOPS
        sti
.quiet: loop .quiet
        cli
        CHECK "rtc_irq.pie_off", [ticks], ebx
        ret

; cmos_read: AL = index -> EAX = value. cmos_write: AL = index, AH = value. Clobber EAX.
cmos_read:
        out CMOS_INDEX, al
        in al, CMOS_DATA
        movzx eax, al
        ret

cmos_write:
        out CMOS_INDEX, al
        mov al, ah
        out CMOS_DATA, al
        ret

irq8_handler:
        push eax
        mov al, RTC_REG_C
        call cmos_read
        and [flags_and], eax
        inc dword [ticks]
        mov al, PIC_EOI
        out PIC2_CMD, al
        out PIC1_CMD, al
        pop eax
        iret

other_handler:
        inc dword [other_irqs]
        iret

        align 4
ticks:          dd 0
flags_and:      dd 0xFFFFFFFF
other_irqs:     dd 0
