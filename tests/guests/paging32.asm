; paging32: 32-bit paging (SDM Vol. 3A 4.3) with 4 KiB pages.
;   identity map of 0-8 MiB, plus an alias page ALIAS_VA -> DATA_A and a
;   not-present page ALIAS_VA + 0x1000; checks reads and writes through the
;   alias, the accessed/dirty bits the CPU sets in the PTE (4.8), #PF error
;   codes and CR2 (4.7) for a not-present read, a not-present write and a
;   write to a read-only page with CR0.WP=1, and INVLPG after a PTE change.
%include "lib.inc"

%define PD          0x200000
%define PT_LOW      0x201000            ; two page tables: 0-4 MiB and 4-8 MiB
%define PT_ALIAS    0x203000
%define DATA_A      0x300000
%define DATA_B      0x301000
%define ALIAS_VA    0x40000000          ; PD index 256, PT index 0
%define PTE_P       0x001
%define PTE_RW      0x002
%define PTE_A       0x020
%define PTE_D       0x040
%define CR0_PG      0x80000000
%define CR0_WP      0x00010000

main:
        call idt_init
        ; Zero the PD and the three page tables.
        mov edi, PD
        mov ecx, 4 * 1024
        xor eax, eax
        rep stosd
        ; Identity map 0-8 MiB.
        mov edi, PT_LOW
        mov eax, PTE_P | PTE_RW
        mov ecx, 2048
.ident: stosd
        add eax, 0x1000
        loop .ident
        mov dword [PD + 0 * 4], PT_LOW | PTE_P | PTE_RW
        mov dword [PD + 1 * 4], (PT_LOW + 0x1000) | PTE_P | PTE_RW
        mov dword [PD + (ALIAS_VA >> 22) * 4], PT_ALIAS | PTE_P | PTE_RW
        mov dword [PT_ALIAS + 0], DATA_A | PTE_P | PTE_RW
        ; PT_ALIAS + 4 stays 0: ALIAS_VA + 0x1000 is not present.
        mov dword [DATA_A], 0x11111111
        mov dword [DATA_B], 0x22222222

        mov eax, PD
        mov cr3, eax
        mov eax, cr0
        or eax, CR0_PG
        mov cr0, eax
        jmp .paged                      ; SDM 9.9.1: a branch after setting PG
.paged:
        mov eax, cr0
        and eax, CR0_PG
        CHECK "paging32.enabled", eax, CR0_PG

        ; A and D are clear until the alias page is used.
        mov eax, [PT_ALIAS]
        and eax, PTE_A | PTE_D
        CHECK "paging32.ad_clear", eax, 0
        mov eax, [ALIAS_VA]
        CHECK "paging32.alias_read", eax, 0x11111111
        mov eax, [PT_ALIAS]
        and eax, PTE_A | PTE_D
        CHECK "paging32.accessed_after_read", eax, PTE_A
        mov dword [ALIAS_VA + 4], 0xCAFEBABE
        mov eax, [PT_ALIAS]
        and eax, PTE_A | PTE_D
        CHECK "paging32.dirty_after_write", eax, PTE_A | PTE_D
        mov eax, [DATA_A + 4]
        CHECK "paging32.alias_write", eax, 0xCAFEBABE
        ; The PDE gets A as well (4.8: the CPU sets A in every paging-structure entry it uses).
        mov eax, [PD + (ALIAS_VA >> 22) * 4]
        and eax, PTE_A
        CHECK "paging32.pde_accessed", eax, PTE_A

        ; #PF on a read of a not-present page: error code 0 (P=0, W/R=0, U/S=0), CR2 = address.
        EXPECT_FAULT .after_read_fault
.read_fault:
        mov eax, [ALIAS_VA + 0x1010]
.after_read_fault:
        CHECK "paging32.pf_read_vector", [exc_vector], 14
        CHECK "paging32.pf_read_error", [exc_error], 0
        CHECK "paging32.pf_read_cr2", [exc_cr2], ALIAS_VA + 0x1010
        CHECK "paging32.pf_read_eip", [exc_eip], .read_fault

        ; #PF on a write to it: error code 2 (W/R=1).
        EXPECT_FAULT .after_write_fault
.write_fault:
        mov dword [ALIAS_VA + 0x1ffc], 1
.after_write_fault:
        CHECK "paging32.pf_write_error", [exc_error], 2
        CHECK "paging32.pf_write_cr2", [exc_cr2], ALIAS_VA + 0x1ffc

        ; Make the alias read-only; with CR0.WP=1 a supervisor write faults with P=1, W/R=1.
        and dword [PT_ALIAS], ~PTE_RW
        invlpg [ALIAS_VA]
        mov eax, cr0
        or eax, CR0_WP
        mov cr0, eax
        EXPECT_FAULT .after_wp_fault
.wp_fault:
        mov dword [ALIAS_VA + 8], 0xBAD
.after_wp_fault:
        CHECK "paging32.pf_wp_error", [exc_error], 3
        CHECK "paging32.pf_wp_eip", [exc_eip], .wp_fault
        mov eax, [DATA_A + 8]
        cmp eax, 0xBAD
        setne al
        movzx eax, al
        CHECK "paging32.wp_write_blocked", eax, 1

        ; Retarget the alias to DATA_B; after INVLPG the new translation is used.
        mov eax, [ALIAS_VA]             ; make sure the old translation is cached
        mov dword [PT_ALIAS], DATA_B | PTE_P | PTE_RW
        invlpg [ALIAS_VA]
        mov eax, [ALIAS_VA]
        CHECK "paging32.invlpg", eax, 0x22222222

        ; And a mapping made present afterwards is usable after INVLPG.
        mov dword [PT_ALIAS + 4], DATA_A | PTE_P | PTE_RW
        invlpg [ALIAS_VA + 0x1000]
        mov eax, [ALIAS_VA + 0x1000]
        CHECK "paging32.now_present", eax, 0x11111111
        ret
