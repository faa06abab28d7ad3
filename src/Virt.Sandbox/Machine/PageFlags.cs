// The sandbox's page-table bits are the architecture's: Virt.X86.PageFlags (P, R/W, U/S, A, D, XD, ...).
global using PageFlags = Virt.X86.PageFlags;
