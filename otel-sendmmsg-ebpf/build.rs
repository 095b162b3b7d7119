//! Tells the BPF code which architecture's registers it reads (`bpf_target_arch`), the way
//! aya-ebpf does for itself: the BPF target is the same on every architecture, the kernel's
//! `pt_regs` is not.
fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}
