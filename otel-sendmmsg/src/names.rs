//! Human names for the numbers a syscall deals in: errno values and `MSG_*` flags.

use nix::errno::Errno;

/// The symbolic name of an errno value (`EAGAIN`), or `errno N` for one this libc does not know.
/// Accepts the value with either sign, as the kernel returns it negated.
pub fn errno_name(errno: i64) -> String {
    let n = errno.unsigned_abs();
    // The kernel's own restart codes (include/linux/errno.h): a call interrupted by a signal,
    // or cut short when its thread was killed, exits with one of these.
    let kernel_internal = match n {
        512 => Some("ERESTARTSYS"),
        513 => Some("ERESTARTNOINTR"),
        514 => Some("ERESTARTNOHAND"),
        516 => Some("ERESTART_RESTARTBLOCK"),
        _ => None,
    };
    if let Some(name) = kernel_internal {
        return name.to_owned();
    }
    match i32::try_from(n).map(Errno::from_raw) {
        Ok(Errno::UnknownErrno) | Err(_) => format!("errno {n}"),
        Ok(e) => format!("{e:?}"),
    }
}

/// The `sendmsg` flags, in the order `send(2)` documents them.
const SEND_FLAGS: &[(i32, &str)] = &[
    (libc::MSG_CONFIRM, "MSG_CONFIRM"),
    (libc::MSG_DONTROUTE, "MSG_DONTROUTE"),
    (libc::MSG_DONTWAIT, "MSG_DONTWAIT"),
    (libc::MSG_EOR, "MSG_EOR"),
    (libc::MSG_MORE, "MSG_MORE"),
    (libc::MSG_NOSIGNAL, "MSG_NOSIGNAL"),
    (libc::MSG_OOB, "MSG_OOB"),
    (libc::MSG_FASTOPEN, "MSG_FASTOPEN"),
    (libc::MSG_ZEROCOPY, "MSG_ZEROCOPY"),
    (libc::MSG_WAITFORONE, "MSG_WAITFORONE"),
    (libc::MSG_PEEK, "MSG_PEEK"),
    (libc::MSG_TRUNC, "MSG_TRUNC"),
    (libc::MSG_WAITALL, "MSG_WAITALL"),
    (libc::MSG_ERRQUEUE, "MSG_ERRQUEUE"),
    (libc::MSG_CMSG_CLOEXEC, "MSG_CMSG_CLOEXEC"),
];

/// `MSG_DONTWAIT|MSG_NOSIGNAL` for the known bits, any unknown ones as one hex number at the
/// end; empty for 0. Written where it is shown, without a `String` per name: the flags are on
/// nearly every call's span.
pub struct MsgFlagNames(pub u32);

impl std::fmt::Display for MsgFlagNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        let mut separator = "";
        for &(bit, name) in SEND_FLAGS {
            let bit = bit as u32;
            if rest & bit != 0 {
                write!(f, "{separator}{name}")?;
                separator = "|";
                rest &= !bit;
            }
        }
        if rest != 0 {
            write!(f, "{separator}{rest:#x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_accept_either_sign() {
        assert_eq!(errno_name(-11), "EAGAIN");
        assert_eq!(errno_name(9), "EBADF");
        assert_eq!(errno_name(-(libc::EMSGSIZE as i64)), "EMSGSIZE");
        assert_eq!(errno_name(-(libc::ECONNREFUSED as i64)), "ECONNREFUSED");
    }

    #[test]
    fn the_kernels_restart_codes_have_names_too() {
        assert_eq!(errno_name(-512), "ERESTARTSYS");
        assert_eq!(errno_name(-516), "ERESTART_RESTARTBLOCK");
    }

    #[test]
    fn unknown_errno_keeps_its_number() {
        assert_eq!(errno_name(-4095), "errno 4095");
        assert_eq!(errno_name(i64::MIN), format!("errno {}", i64::MIN.unsigned_abs()));
    }

    #[test]
    fn flag_names_join_known_bits_and_keep_unknown_ones() {
        let msg_flag_names = |flags| MsgFlagNames(flags).to_string();
        assert_eq!(msg_flag_names(0), "");
        assert_eq!(msg_flag_names(libc::MSG_DONTWAIT as u32), "MSG_DONTWAIT");
        assert_eq!(
            msg_flag_names((libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as u32),
            "MSG_DONTWAIT|MSG_NOSIGNAL"
        );
        assert_eq!(msg_flag_names(libc::MSG_DONTWAIT as u32 | 0x0200_0000), "MSG_DONTWAIT|0x2000000");
    }
}
