; sse: the SSE state a kernel manages (SDM Vol. 3A 13.1, 2.5; Vol. 1 ch. 10-11).
;   CR0.MP/NE and CR4.OSFXSR/OSXMMEXCPT set; SSE2 integer and scalar double
;   arithmetic and conversions; FXSAVE stores XMM0, the x87 control word
;   (after FNINIT) and MXCSR (with PE from an inexact conversion) where the
;   layout says, and FXRSTOR brings a clobbered XMM register back; with
;   CR0.TS set, the first SSE instruction raises #NM (device not available)
;   and CLTS lets it run. MMX lanes and the MMX/x87 state sharing, see below.
%include "lib.inc"

%define CR4_OSFXSR  (1 << 9)
%define CR4_OSXMMEXCPT (1 << 10)

main:
        call idt_init
        call fpu_enable
        mov eax, cr4
        or eax, CR4_OSFXSR | CR4_OSXMMEXCPT
        mov cr4, eax
        fninit

        ; SSE2 integer: four dword adds, a shuffle, MOVD out.
        movdqu xmm0, [vec_a]
        movdqu xmm1, [vec_b]
        paddd xmm0, xmm1
        movdqu [vec_out], xmm0
        CHECK "sse.paddd_lane0", [vec_out], 0x11111111 + 1
        CHECK "sse.paddd_lane3", [vec_out + 12], 0x44444444 + 4
        pshufd xmm2, xmm0, 0x1B         ; reverse the lanes
        movd eax, xmm2
        CHECK "sse.pshufd_movd", eax, 0x44444448
        pxor xmm3, xmm3
        pcmpeqb xmm3, xmm3              ; all ones
        pmovmskb eax, xmm3
        CHECK "sse.pcmpeqb_pmovmskb", eax, 0xFFFF

        ; SSE2 scalar double: (7.5 * 2.0 + 0.25) truncated, sqrt(2.25) * 100.
        movsd xmm4, [d7_5]
        mulsd xmm4, [d2_0]
        addsd xmm4, [d0_25]
        cvttsd2si eax, xmm4
        CHECK "sse.scalar_double", eax, 15
        mov eax, 9
        cvtsi2sd xmm5, eax
        sqrtsd xmm5, xmm5
        mulsd xmm5, [d100]
        cvtsd2si eax, xmm5
        CHECK "sse.cvt_sqrt", eax, 300

        ; FXSAVE layout (SDM Vol. 1 Table 10-2): FCW at 0, MXCSR at 24, XMM0 at 160.
        fxsave [fxarea]
        movzx eax, word [fxarea]
        CHECK "sse.fxsave_fcw", eax, 0x037F
        ; Default masks, and PE (precision, bit 5) from the inexact truncation of 15.25 above.
        CHECK "sse.fxsave_mxcsr", [fxarea + 24], 0x1FA0
        CHECK "sse.fxsave_xmm0", [fxarea + 160], 0x11111112
        pxor xmm0, xmm0
        fxrstor [fxarea]
        movd eax, xmm0
        CHECK "sse.fxrstor_xmm0", eax, 0x11111112

        ; MMX (SDM Vol. 1 ch. 9): unsigned saturation, PMADDWD's wrap, pack saturation, shifts by
        ; at least the lane width; the x87 aliasing (TOP 0 and every tag valid in FXSAVE, mm1 in
        ; the ST1/MM1 slot), EMMS emptying the tags. Not checked here: bits 64-79 of the slot, all
        ; ones on hardware (SDM Vol. 1 9.5.1) but not on QEMU TCG; CR0.EM -> #UD, which kvm on PVM
        ; hands to the bt fallback, and that refuses every #UD.
        movq mm0, [mmx_a]
        paddusb mm0, [mmx_b]
        movd eax, mm0
        CHECK "sse.mmx_paddusb", eax, 0xFF000AFF
        movq mm1, [mmx_w1]
        pmaddwd mm1, [mmx_w2]
        movd eax, mm1
        CHECK "sse.mmx_pmaddwd_wrap", eax, 0x80000000
        psrlq mm1, 32
        movd eax, mm1
        CHECK "sse.mmx_pmaddwd", eax, -7
        movq mm2, [mmx_w3]
        movq mm3, mm2
        packsswb mm2, mm2
        movd eax, mm2
        CHECK "sse.mmx_packsswb", eax, 0xFB05807F
        psraw mm3, 40
        movd eax, mm3
        CHECK "sse.mmx_psraw_past_width", eax, 0xFFFF0000
        fxsave [fxarea]
        movzx eax, byte [fxarea + 4]
        CHECK "sse.mmx_tags_valid", eax, 0xFF
        movzx eax, word [fxarea + 2]
        and eax, 0x3800
        CHECK "sse.mmx_top_zero", eax, 0
        CHECK "sse.mmx_fxsave_mm1", [fxarea + 48], -7
        emms
        fxsave [fxarea]
        movzx eax, byte [fxarea + 4]
        CHECK "sse.emms_tags_empty", eax, 0

        ; CR0.TS: the next SSE instruction faults with #NM; CLTS clears TS.
        mov eax, cr0
        or eax, CR0_TS
        mov cr0, eax
        EXPECT_FAULT .after_nm
.nm:    paddd xmm0, xmm1
.after_nm:
        CHECK "sse.ts_nm_vector", [exc_vector], 7
        CHECK "sse.ts_nm_eip", [exc_eip], .nm
        clts
        paddd xmm0, xmm1
        movd eax, xmm0
        CHECK "sse.after_clts", eax, 0x11111112 + 1
        ret


        align 16
vec_a:      dd 0x11111111, 0x22222222, 0x33333333, 0x44444444
vec_b:      dd 1, 2, 3, 4
vec_out:    times 4 dd 0
d7_5:       dq 7.5
d2_0:       dq 2.0
d0_25:      dq 0.25
d100:       dq 100.0
mmx_a:      db 250, 5, 0, 255, 1, 2, 3, 4
mmx_b:      db 10, 5, 0, 1, 1, 1, 1, 1
mmx_w1:     dw 0x8000, 0x8000, 2, 3
mmx_w2:     dw 0x8000, 0x8000, 4, -5
mmx_w3:     dw 300, -300, 5, -5
        align 16
fxarea:     times 512 db 0
