//! Byte offsets of the kernel fields the BPF side reads, from the running kernel's BTF, so the
//! same BPF object reads sockets correctly on any kernel that describes itself.

use otel_sendmmsg_common::KernelOffsets;

use super::btf_types::Types;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reads every offset from the BTF file; Err names what is missing.
pub fn from_btf_file(path: &str) -> Result<KernelOffsets, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read kernel BTF at {path}: {e}"))?;
    let btf = Types::parse(data).map_err(|e| format!("cannot read kernel BTF at {path}: {e}"))?;
    let field = |s: &str, f: &str| member_offset(&btf, s, f);
    Ok(KernelOffsets {
        valid: 1,
        task_group_leader: field("task_struct", "group_leader")?,
        task_comm: field("task_struct", "comm")?,
        task_files: field("task_struct", "files")?,
        files_fdt: field("files_struct", "fdt")?,
        fdt_max_fds: field("fdtable", "max_fds")?,
        fdt_fd: field("fdtable", "fd")?,
        file_private_data: field("file", "private_data")?,
        socket_type: field("socket", "type")?,
        socket_file: field("socket", "file")?,
        socket_sk: field("socket", "sk")?,
        // struct sock starts with its struct sock_common (__sk_common).
        sk_family: field("sock_common", "skc_family")?,
        sk_protocol: field("sock", "sk_protocol")?,
        // Optional: without it the exit walks from the fd to the socket, as when the message
        // hook names none.
        sk_type: field("sock", "sk_type").unwrap_or(0),
        sk_daddr: field("sock_common", "skc_daddr")?,
        sk_rcv_saddr: field("sock_common", "skc_rcv_saddr")?,
        sk_dport: field("sock_common", "skc_dport")?,
        sk_num: field("sock_common", "skc_num")?,
        sk_v6_daddr: field("sock_common", "skc_v6_daddr")?,
        sk_v6_rcv_saddr: field("sock_common", "skc_v6_rcv_saddr")?,
        // Optional: without it only the check of a process's identity against a reused pid is
        // lost, not the socket context.
        task_start_boottime: field("task_struct", "start_boottime")
            .or_else(|_| field("task_struct", "real_start_time"))
            .unwrap_or(0),
        // Optional: x86-64 keeps the thread pointer there; without it (another architecture)
        // only the OTEP 4947 thread context is not read.
        task_fsbase: field("task_struct", "thread")
            .and_then(|thread| Ok(thread + field("thread_struct", "fsbase")?))
            .inspect_err(|why| tracing::info!("{why}: no OTEP 4947 thread context"))
            .unwrap_or(0),
        ..identity_offsets(&btf)
            .inspect_err(|why| tracing::info!("{why}: no identity capture in the kernel"))
            .unwrap_or_default()
    })
}

/// The offsets the identity capture reads (see [`KernelOffsets::identity_valid`]): all or none.
fn identity_offsets(btf: &Types) -> Result<KernelOffsets, String> {
    let field = |s: &str, f: &str| member_offset(btf, s, f);
    Ok(KernelOffsets {
        identity_valid: 1,
        task_mm: field("task_struct", "mm")?,
        mm_env_start: field("mm_struct", "env_start")?,
        mm_env_end: field("mm_struct", "env_end")?,
        mm_exe_file: field("mm_struct", "exe_file")?,
        file_dentry: field("file", "f_path")? + field("path", "dentry")?,
        dentry_name: field("dentry", "d_name")? + field("qstr", "name")?,
        task_cgroups: field("task_struct", "cgroups")?,
        css_set_dfl_cgrp: field("css_set", "dfl_cgrp")?,
        cgroup_kn: field("cgroup", "kn")?,
        kernfs_name: field("kernfs_node", "name")?,
        // Renamed when it became RCU-protected (Linux 6.15).
        kernfs_parent: field("kernfs_node", "__parent").or_else(|_| field("kernfs_node", "parent"))?,
        ..KernelOffsets::default()
    })
}

/// The byte offset of `field` in `strukt`, looking through anonymous structs and unions.
fn member_offset(btf: &Types, strukt: &str, field: &str) -> Result<u32, String> {
    let id = btf.struct_named(strukt).ok_or_else(|| format!("struct {strukt} is not in the kernel's BTF"))?;
    let (bits, bitfield) = find_member(btf, id, field.as_bytes(), 0, 0)
        .ok_or_else(|| format!("struct {strukt} has no field {field} in the kernel's BTF"))?;
    if bitfield || bits % 8 != 0 {
        return Err(format!("{strukt}.{field} is a bitfield on this kernel"));
    }
    // sock.sk_protocol is why bitfields are refused: kernels before 5.6 packed it into one.
    Ok(bits / 8)
}

/// Anonymous members nest this deep at most in the structs we read; a bound keeps a malformed
/// file with a cycle from recursing forever.
const MAX_NESTING: u32 = 8;

fn find_member(btf: &Types, id: u32, field: &[u8], base_bits: u32, depth: u32) -> Option<(u32, bool)> {
    if depth > MAX_NESTING {
        return None;
    }
    btf.members(id).find_map(|m| {
        let name = btf.member_name(&m);
        if name == field {
            Some((base_bits + m.bit_offset, m.bitfield_bits != 0))
        } else if name.is_empty() {
            find_member(btf, m.type_id, field, base_bits + m.bit_offset, depth + 1)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read from this machine's kernel; the BTF file is what the sidecar reads in production.
    #[test]
    fn every_offset_resolves_on_the_running_kernel() {
        let off = from_btf_file(VMLINUX_BTF).expect("this kernel has BTF");
        assert_eq!(off.valid, 1);
        // struct sock begins with sock_common, whose first member is the address pair.
        assert_eq!(off.sk_daddr, 0);
        assert_eq!(off.sk_rcv_saddr, 4);
        // Ports sit together after the hash; the v6 addresses come after the family.
        assert_eq!(off.sk_num, off.sk_dport + 2);
        assert!(off.sk_v6_rcv_saddr == off.sk_v6_daddr + 16 && off.sk_family < off.sk_v6_daddr);
        assert!(off.sk_protocol > off.sk_v6_rcv_saddr, "sk_protocol lies past sock_common");
        assert!(off.sk_type > off.sk_v6_rcv_saddr, "sk_type lies past sock_common");
        assert_eq!(off.fdt_max_fds, 0);
        assert_eq!(off.identity_valid, 1, "the identity capture's offsets resolve too");
        assert!(off.task_start_boottime != 0);
        assert_eq!(off.mm_env_end, off.mm_env_start + 8, "env_start and env_end are neighbours");
        assert!(off.task_mm != 0 && off.task_cgroups != 0 && off.mm_exe_file != 0);
        assert!(
            off.task_fsbase > off.task_cgroups,
            "the thread pointer lies in thread, at the end of task_struct"
        );
    }

    #[test]
    fn a_missing_btf_file_says_so() {
        let err = from_btf_file("/nonexistent/vmlinux").unwrap_err();
        assert!(err.contains("cannot read kernel BTF at /nonexistent/vmlinux"), "{err}");
    }
}
