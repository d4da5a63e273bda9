; pagetable_writes: translations follow page-table writes (SDM Vol. 3A 4.10.4).
; Changing a PTE without invalidation is architecturally undefined, so every
; change here is followed by INVLPG or a CR3 load. Covered: two page
; directories switched through CR3; a PTE rewritten through a virtual mapping
; of the page table itself; a PDE pointed at another page table.
%include "lib.inc"

%define PD_A        0x200000
%define PD_B        0x201000
%define PT_LOW      0x202000            ; 0-8 MiB identity map (two tables), shared by both
%define PT_A        0x204000            ; maps WINDOW in PD_A
%define PT_B        0x205000            ; maps WINDOW in PD_B
%define PT_C        0x206000            ; a spare table for the PDE change
%define PAGE_1      0x300000
%define PAGE_2      0x301000
%define PAGE_3      0x302000
%define WINDOW      0x40000000          ; PD index 256
%define PT_VIEW     0x40001000          ; PT_A mapped as data, in PD_A's window
%define P_RW        0x003

main:
        mov edi, PD_A
        mov ecx, 7 * 1024
        xor eax, eax
        rep stosd
        mov edi, PT_LOW
        mov eax, P_RW
        mov ecx, 2048
.ident: stosd
        add eax, 0x1000
        loop .ident
        mov dword [PAGE_1], 0x1111
        mov dword [PAGE_2], 0x2222
        mov dword [PAGE_3], 0x3333
        ; PD_A: WINDOW -> PAGE_1, and WINDOW + 0x1000 -> PT_A itself.
        mov dword [PD_A + 0], PT_LOW | P_RW
        mov dword [PD_A + 4], (PT_LOW + 0x1000) | P_RW
        mov dword [PD_A + 256 * 4], PT_A | P_RW
        mov dword [PT_A + 0], PAGE_1 | P_RW
        mov dword [PT_A + 4], PT_A | P_RW
        ; PD_B: WINDOW -> PAGE_2.
        mov dword [PD_B + 0], PT_LOW | P_RW
        mov dword [PD_B + 4], (PT_LOW + 0x1000) | P_RW
        mov dword [PD_B + 256 * 4], PT_B | P_RW
        mov dword [PT_B + 0], PAGE_2 | P_RW
        ; PT_C: WINDOW -> PAGE_3.
        mov dword [PT_C + 0], PAGE_3 | P_RW

        mov eax, PD_A
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        jmp .paged
.paged:
        mov eax, [WINDOW]
        CHECK "pagetable_writes.pd_a", eax, 0x1111
        mov eax, PD_B
        mov cr3, eax
        mov eax, [WINDOW]
        CHECK "pagetable_writes.cr3_switch_to_b", eax, 0x2222
        mov eax, PD_A
        mov cr3, eax
        mov eax, [WINDOW]
        CHECK "pagetable_writes.cr3_switch_back_to_a", eax, 0x1111

        ; Rewrite PT_A[0] through its own virtual mapping, then INVLPG.
        mov dword [PT_VIEW + 0], PAGE_2 | P_RW
        invlpg [WINDOW]
        mov eax, [WINDOW]
        CHECK "pagetable_writes.pte_via_mapping", eax, 0x2222
        ; Writes through the new translation land in PAGE_2.
        mov dword [WINDOW + 4], 0x2B2B
        mov eax, [PAGE_2 + 4]
        CHECK "pagetable_writes.write_follows", eax, 0x2B2B

        ; Rewrite the PTE through the identity map, then reload CR3 (flushes non-global entries).
        mov dword [PT_A + 0], PAGE_3 | P_RW
        mov eax, cr3
        mov cr3, eax
        mov eax, [WINDOW]
        CHECK "pagetable_writes.pte_then_cr3_reload", eax, 0x3333

        ; Point the PDE at another page table.
        mov eax, [WINDOW + 0x1000]      ; PT_VIEW's first entry, through PT_A
        and eax, ~0xFFF
        CHECK "pagetable_writes.pt_self_map", eax, PAGE_3
        mov dword [PD_A + 256 * 4], PT_C | P_RW
        mov eax, cr3
        mov cr3, eax
        mov eax, [WINDOW]
        CHECK "pagetable_writes.pde_change", eax, 0x3333
        mov dword [PT_C + 0], PAGE_1 | P_RW
        invlpg [WINDOW]
        mov eax, [WINDOW]
        CHECK "pagetable_writes.pt_c_invlpg", eax, 0x1111

        ; And PD_B was never touched.
        mov eax, PD_B
        mov cr3, eax
        mov eax, [WINDOW]
        CHECK "pagetable_writes.pd_b_unchanged", eax, 0x2222
        ret
