//! Netlink sockets: opening them inside a network namespace, the blocking
//! batch socket (route dumps and batched requests), and reading the
//! messages of a datagram.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkMessage, Parseable,
};
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use overlay_core::ProgrammerError;

use crate::errno::{CONNECTION_CLOSED, Errno, io_errno};
use crate::read::{KernelRoute, parse_route};

/// `RTM_NEWROUTE`.
const RTM_NEWROUTE: u16 = 24;

/// Runs `f` on a fresh thread that entered the namespace at `path` (or the
/// current one) with the tokio runtime `rt` entered, so that the sockets it
/// opens belong to that namespace and are registered with `rt`.
pub(crate) fn in_netns<T: Send>(
    path: Option<&Path>,
    rt: &tokio::runtime::Handle,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> Result<T, ProgrammerError> {
    let ns_name = || {
        path.map(|p| p.display().to_string())
            .unwrap_or_else(|| "current".into())
    };
    let joined = std::thread::scope(|s| {
        s.spawn(|| -> Result<T, ProgrammerError> {
            if let Some(p) = path {
                enter_netns(p)?;
            }
            let _guard = rt.enter();
            f().map_err(|e| ProgrammerError::Namespace {
                namespace: ns_name(),
                message: format!("cannot open a netlink socket: {e}"),
            })
        })
        .join()
    });
    joined.unwrap_or_else(|_| {
        Err(ProgrammerError::Namespace {
            namespace: ns_name(),
            message: "the thread opening the netlink socket panicked".into(),
        })
    })
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) -> Result<(), ProgrammerError> {
    let namespace = || path.display().to_string();
    let file = File::open(path).map_err(|e| ProgrammerError::Namespace {
        namespace: namespace(),
        message: format!(
            "cannot open: {e}; pass the path of a namespace file such as /run/netns/NAME"
        ),
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        ProgrammerError::Namespace {
            namespace: namespace(),
            message: format!("setns failed: {e}; entering a namespace needs CAP_SYS_ADMIN"),
        }
    })
}

/// Sets a socket's receive buffer, beyond `rmem_max` when we may.
pub(crate) fn set_receive_buffer(sock: &netlink_sys::Socket, bytes: usize) {
    if nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::RcvBufForce, &bytes).is_err() {
        let _ = sock.set_rx_buf_sz(bytes);
    }
}

/// The netlink messages of one datagram, each over exactly its own bytes;
/// stops at the first malformed header.
pub(crate) fn frames(buf: &[u8]) -> impl Iterator<Item = NetlinkBuffer<&[u8]>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(off..)?;
        let len = NetlinkBuffer::new_checked(rest).ok()?.length() as usize;
        off += (len + 3) & !3;
        NetlinkBuffer::new_checked(&rest[..len]).ok()
    })
}

/// The answer an `NLMSG_ERROR` message carries: `Ok` for an
/// acknowledgement (code 0), else the errno; `None` when it is too short.
fn ack_answer(frame: &NetlinkBuffer<&[u8]>) -> Option<Result<(), Errno>> {
    let p = frame.payload();
    let code = i32::from_ne_bytes(p.get(..4)?.try_into().ok()?);
    Some(if code == 0 { Ok(()) } else { Err(code.abs()) })
}

/// A blocking netlink socket for dumps and batched requests: it packs many
/// requests into each `sendmsg` (the kernel handles them in order and
/// acknowledges each), so thousands of routes cost tens of system calls,
/// not thousands.
pub(crate) struct BatchSocket {
    sock: Mutex<netlink_sys::Socket>,
    /// Netlink port id (notifications caused by these requests carry it).
    pub port: u32,
    seq: AtomicU32,
}

/// Bytes of requests per `sendmsg` (well below the default send buffer).
const BATCH_BYTES: usize = 32 * 1024;
/// Receive buffer size of the batch socket (acknowledgements of a batch).
const BATCH_RCVBUF: usize = 8 << 20;
/// Bytes read per `recv`.
const RECV_BYTES: usize = 1 << 18;

impl BatchSocket {
    /// Opens the socket in the calling thread's namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        let addr = sock.bind_auto()?;
        let _ = sock.set_cap_ack(true);
        let _ = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(10, 0),
        );
        set_receive_buffer(&sock, BATCH_RCVBUF);
        Ok(Self {
            sock: Mutex::new(sock),
            port: addr.port_number(),
            seq: AtomicU32::new(1),
        })
    }

    /// Dumps all IPv4 and IPv6 routes of all tables (one dump, parsed as it
    /// is read). Blocking.
    pub(crate) fn dump_routes(&self) -> Result<Vec<KernelRoute>, Errno> {
        let sock = self.sock.lock().map_err(|_| CONNECTION_CLOSED)?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Unspec;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(m));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        sock.send(&buf, 0).map_err(|e| io_errno(&e))?;
        let mut out = Vec::new();
        let mut rbuf: Vec<u8> = Vec::with_capacity(RECV_BYTES);
        loop {
            rbuf.clear();
            rbuf.reserve(RECV_BYTES);
            sock.recv(&mut rbuf, 0).map_err(|e| io_errno(&e))?;
            for frame in frames(&rbuf).filter(|f| f.sequence_number() == seq) {
                match frame.message_type() {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        if let Some(Err(errno)) = ack_answer(&frame) {
                            return Err(errno);
                        }
                    }
                    RTM_NEWROUTE => out.extend(
                        RouteMessage::parse(frame.payload())
                            .ok()
                            .as_ref()
                            .and_then(parse_route),
                    ),
                    _ => {}
                }
            }
        }
    }

    /// Sends every request (each with its flags, which must include
    /// `NLM_F_ACK`), at most `per_send` of them per `sendmsg`, and returns
    /// each one's answer, in order. Blocking.
    pub(crate) fn send_batch(
        &self,
        msgs: Vec<(RouteNetlinkMessage, u16)>,
        per_send: usize,
    ) -> Vec<Result<(), Errno>> {
        let n = msgs.len();
        let mut answers: Vec<Result<(), Errno>> = vec![Err(CONNECTION_CLOSED); n];
        if n == 0 {
            return answers;
        }
        let Ok(sock) = self.sock.lock() else {
            return answers;
        };
        let base = self
            .seq
            .fetch_add(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
        let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 4096);
        let mut rbuf: Vec<u8> = Vec::with_capacity(RECV_BYTES);
        let mut msgs = msgs.into_iter().enumerate().peekable();
        while let Some(&(start, _)) = msgs.peek() {
            buf.clear();
            let mut end = start;
            while buf.len() < BATCH_BYTES && end - start < per_send {
                let Some((i, (msg, flags))) = msgs.next() else {
                    break;
                };
                encode(&mut buf, msg, flags, base.wrapping_add(i as u32));
                end = i + 1;
            }
            if let Err(e) = sock.send(&buf, 0) {
                answers[start..end].fill(Err(io_errno(&e)));
                continue;
            }
            receive_acks(&sock, &mut rbuf, base, start..end, &mut answers);
        }
        answers
    }
}

/// Appends request `msg` with `flags` and sequence number `seq` to `buf`.
fn encode(buf: &mut Vec<u8>, msg: RouteNetlinkMessage, flags: u16, seq: u32) {
    let mut m = NetlinkMessage::from(msg);
    m.header.flags = flags;
    m.header.sequence_number = seq;
    m.finalize();
    let off = buf.len();
    buf.resize(off + m.buffer_len(), 0);
    m.serialize(&mut buf[off..]);
}

/// Reads the acknowledgements of the requests numbered `sent` (sequence
/// numbers `base + i`) into `answers`. When the socket fails first
/// (acknowledgements lost, `ENOBUFS`, or none coming, the timeout), the
/// unacknowledged requests get that errno.
fn receive_acks(
    sock: &netlink_sys::Socket,
    rbuf: &mut Vec<u8>,
    base: u32,
    sent: Range<usize>,
    answers: &mut [Result<(), Errno>],
) {
    let mut seen = vec![false; sent.len()];
    let mut pending = sent.len();
    while pending > 0 {
        rbuf.clear();
        rbuf.reserve(RECV_BYTES);
        if let Err(e) = sock.recv(rbuf, 0) {
            for (k, _) in seen.iter().enumerate().filter(|(_, done)| !**done) {
                answers[sent.start + k] = Err(io_errno(&e));
            }
            return;
        }
        for frame in frames(rbuf).filter(|f| f.message_type() == NLMSG_ERROR) {
            let idx = frame.sequence_number().wrapping_sub(base) as usize;
            if !sent.contains(&idx) || seen[idx - sent.start] {
                continue;
            }
            if let Some(answer) = ack_answer(&frame) {
                answers[idx] = answer;
                seen[idx - sent.start] = true;
                pending -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram of `msgs`, each with its sequence number.
    fn datagram(msgs: &[(RouteNetlinkMessage, u32)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (m, seq) in msgs {
            encode(&mut buf, m.clone(), NLM_F_REQUEST, *seq);
        }
        buf
    }

    #[test]
    fn frames_walk_every_message_of_a_datagram() {
        let route = RouteNetlinkMessage::GetRoute(RouteMessage::default());
        let buf = datagram(&[(route.clone(), 7), (route, 8)]);
        let seqs: Vec<u32> = frames(&buf).map(|f| f.sequence_number()).collect();
        assert_eq!(seqs, [7, 8]);
        // A cut-off message ends the walk.
        assert_eq!(frames(&buf[..buf.len() - 2]).count(), 1);
        assert_eq!(frames(&[]).count(), 0);
    }

    #[test]
    fn acks_carry_their_errno() {
        let mut buf = vec![0u8; 16 + 4];
        let mut frame = NetlinkBuffer::new(&mut buf[..]);
        frame.set_length(20);
        frame.set_message_type(NLMSG_ERROR);
        frame.payload_mut()[..4].copy_from_slice(&(-17i32).to_ne_bytes());
        let f = frames(&buf).next().unwrap();
        assert_eq!(ack_answer(&f), Some(Err(17)));
    }
}
