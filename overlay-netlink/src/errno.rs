//! Kernel error numbers: the ones overlay tells apart, their messages, and
//! their mapping to [`ProgrammerError`].

use std::io;

use overlay_core::ProgrammerError;

/// An errno from the kernel (positive), or [`CONNECTION_CLOSED`].
pub(crate) type Errno = i32;

/// Pseudo-errno: the netlink socket or its task is gone.
pub(crate) const CONNECTION_CLOSED: Errno = -1;

pub(crate) const EPERM: Errno = 1;
pub(crate) const ENOENT: Errno = 2;
pub(crate) const ESRCH: Errno = 3;
pub(crate) const EAGAIN: Errno = 11;
pub(crate) const EACCES: Errno = 13;
pub(crate) const EEXIST: Errno = 17;
pub(crate) const ENODEV: Errno = 19;
pub(crate) const EADDRNOTAVAIL: Errno = 99;
pub(crate) const ENETUNREACH: Errno = 101;
pub(crate) const ENOBUFS: Errno = 105;
pub(crate) const EHOSTUNREACH: Errno = 113;

/// True for the errnos that mean "not allowed" (no CAP_NET_ADMIN).
pub(crate) fn is_permission(errno: Errno) -> bool {
    errno == EPERM || errno == EACCES
}

/// Maps a kernel errno of `call` to a typed error.
pub(crate) fn errno_error(call: &str, errno: Errno) -> ProgrammerError {
    if is_permission(errno) {
        return ProgrammerError::PermissionDenied { call: call.into() };
    }
    ProgrammerError::Kernel {
        call: call.into(),
        message: errno_message(errno),
    }
}

/// A readable message for an errno.
pub(crate) fn errno_message(errno: Errno) -> String {
    if errno == CONNECTION_CLOSED {
        "the netlink connection is closed (was the tokio runtime shut down?)".into()
    } else {
        io::Error::from_raw_os_error(errno).to_string()
    }
}

/// The errno an rtnetlink request failed with: the code of the kernel's
/// netlink error message, else [`CONNECTION_CLOSED`].
pub(crate) fn rtnetlink_errno(e: rtnetlink::Error) -> Errno {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()).unwrap_or(0),
        _ => CONNECTION_CLOSED,
    }
}

/// The errno of an I/O error on a netlink socket.
pub(crate) fn io_errno(e: &io::Error) -> Errno {
    e.raw_os_error().unwrap_or(CONNECTION_CLOSED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert!(matches!(
            errno_error("x", EPERM),
            ProgrammerError::PermissionDenied { .. }
        ));
        assert!(matches!(
            errno_error("x", EACCES),
            ProgrammerError::PermissionDenied { .. }
        ));
        assert!(matches!(
            errno_error("x", EEXIST),
            ProgrammerError::Kernel { .. }
        ));
        assert!(errno_message(CONNECTION_CLOSED).contains("closed"));
    }
}
