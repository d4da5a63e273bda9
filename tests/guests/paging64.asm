; paging64: 4-level paging and #PF delivery in 64-bit mode (SDM Vol. 3A 4.5, 6.14).
;   The same questions as paging32, asked in long mode (the only paging mode
;   some KVM backends, such as PVM, run): a 4 KiB alias page; A and D set in
;   the PTE; #PF through a 64-bit IDT with error code, CR2 and RIP for a
;   not-present read (0), a not-present write (2), a supervisor write to a
;   read-only page with CR0.WP=1 (3) and an instruction fetch from an
;   execute-disable page with EFER.NXE=1 (0x11); INVLPG after a PTE change;
;   a CR3 switch to a second PML4 that maps the alias elsewhere.
%include "lib.inc"
%include "lib64.inc"

%define PML4_A      0x200000
%define PDPT_A      0x201000
%define PD_LOW      0x202000            ; 0-8 MiB, 2 MiB pages, shared
%define PD_HI_A     0x203000            ; 1 GiB-2 GiB in A
%define PT_A        0x204000
%define PML4_B      0x205000
%define PDPT_B      0x206000
%define PD_HI_B     0x207000
%define PT_B        0x208000
%define DATA_A      0x300000
%define DATA_B      0x301000
%define DATA_C      0x302000
%define CODE_NX     0x303000
%define ALIAS       0x40000000          ; PML4 0, PDPT 1, PD 0, PT 0
%define PG_P        0x001
%define PG_RW       0x002
%define PG_A        0x020
%define PG_D        0x040
%define PG_PS       0x080
%define PG_XD_HIGH  0x80000000          ; bit 63, in the high dword

main:
        mov edi, PML4_A
        mov ecx, 9 * 1024
        xor eax, eax
        rep stosd
        mov dword [PD_LOW + 0], 0x000000 | PG_P | PG_RW | PG_PS
        mov dword [PD_LOW + 8], 0x200000 | PG_P | PG_RW | PG_PS
        mov dword [PD_LOW + 16], 0x400000 | PG_P | PG_RW | PG_PS
        mov dword [PD_LOW + 24], 0x600000 | PG_P | PG_RW | PG_PS
        mov dword [PML4_A], PDPT_A | PG_P | PG_RW
        mov dword [PDPT_A + 0], PD_LOW | PG_P | PG_RW
        mov dword [PDPT_A + 8], PD_HI_A | PG_P | PG_RW
        mov dword [PD_HI_A], PT_A | PG_P | PG_RW
        mov dword [PT_A + 0], DATA_A | PG_P | PG_RW
        ; PT_A[1] (ALIAS + 0x1000) stays not present.
        mov dword [PT_A + 16], CODE_NX | PG_P | PG_RW  ; ALIAS + 0x2000: code page, XD set later
        mov dword [PML4_B], PDPT_B | PG_P | PG_RW
        mov dword [PDPT_B + 0], PD_LOW | PG_P | PG_RW
        mov dword [PDPT_B + 8], PD_HI_B | PG_P | PG_RW
        mov dword [PD_HI_B], PT_B | PG_P | PG_RW
        mov dword [PT_B + 0], DATA_C | PG_P | PG_RW
        mov dword [DATA_A], 0xAAAA
        mov dword [DATA_B], 0xBBBB
        mov dword [DATA_C], 0xCCCC
        mov byte [CODE_NX], 0xC3        ; RET
        mov eax, PML4_A
        jmp enter_long_mode

        bits 64
long_main:
        call idt64_init

        mov eax, [PT_A]
        and eax, PG_A | PG_D
        CHECK64 "paging64.ad_clear", rax, 0
        mov ebx, [ALIAS]
        CHECK64 "paging64.alias_read", rbx, 0xAAAA
        mov eax, [PT_A]
        and eax, PG_A | PG_D
        CHECK64 "paging64.accessed_after_read", rax, PG_A
        mov dword [ALIAS + 4], 0x1234
        mov eax, [PT_A]
        and eax, PG_A | PG_D
        CHECK64 "paging64.dirty_after_write", rax, PG_A | PG_D
        mov ebx, [DATA_A + 4]
        CHECK64 "paging64.alias_write", rbx, 0x1234

        EXPECT64 .after_read
.read:  mov ebx, [ALIAS + 0x1008]
.after_read:
        CHECK64 "paging64.pf_read_vector", [rel exc64_vector], 14
        CHECK64 "paging64.pf_read_error", [rel exc64_error], 0
        mov rbx, ALIAS + 0x1008
        CHECK64 "paging64.pf_read_cr2", [rel exc64_cr2], rbx
        lea rbx, [rel .read]
        CHECK64 "paging64.pf_read_rip", [rel exc64_rip], rbx

        EXPECT64 .after_write
        mov dword [ALIAS + 0x1ff0], 1
.after_write:
        CHECK64 "paging64.pf_write_error", [rel exc64_error], 2

        ; Read-only alias, CR0.WP=1: a supervisor write faults with P=1, W=1.
        and dword [PT_A], ~PG_RW
        invlpg [ALIAS]
        mov rax, cr0
        or eax, CR0_WP
        mov cr0, rax
        EXPECT64 .after_wp
        mov dword [ALIAS + 8], 0xBAD
.after_wp:
        CHECK64 "paging64.pf_wp_error", [rel exc64_error], 3
        mov ebx, [DATA_A + 8]
        xor ecx, ecx
        cmp ebx, 0xBAD
        setne cl
        CHECK64 "paging64.wp_write_blocked", rcx, 1

        ; Execute-disable: with EFER.NXE, fetching from an XD page is #PF with I/D=1 (0x10) | P.
        mov ecx, MSR_EFER
        rdmsr
        or eax, EFER_NXE
        wrmsr
        mov eax, ALIAS + 0x2000
        call rax                        ; executable so far: returns
        or dword [PT_A + 16 + 4], PG_XD_HIGH
        invlpg [ALIAS + 0x2000]
        EXPECT64 .after_nx
        mov eax, ALIAS + 0x2000
        call rax
.after_nx:
        CHECK64 "paging64.pf_nx_error", [rel exc64_error], 0x11
        mov rbx, ALIAS + 0x2000
        CHECK64 "paging64.pf_nx_rip", [rel exc64_rip], rbx

        ; Retarget the alias, INVLPG, read the new page.
        mov ebx, [ALIAS]
        mov dword [PT_A], DATA_B | PG_P | PG_RW
        invlpg [ALIAS]
        mov ebx, [ALIAS]
        CHECK64 "paging64.invlpg", rbx, 0xBBBB

        ; Switch to the second PML4 and back.
        mov eax, PML4_B
        mov cr3, rax
        mov ebx, [ALIAS]
        CHECK64 "paging64.cr3_switch", rbx, 0xCCCC
        mov eax, PML4_A
        mov cr3, rax
        mov ebx, [ALIAS]
        CHECK64 "paging64.cr3_switch_back", rbx, 0xBBBB
        CHECK64 "paging64.page_faults_taken", [rel exc64_count], 4
        jmp finish64

        bits 32
