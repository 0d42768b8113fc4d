//! A DNS server answering A queries for a fixed set of names over UDP,
//! enough for glibc's resolver in a container (`--dns ADDRESS`). Other
//! names get NXDOMAIN, other record types an empty answer.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

pub struct Dns {
    asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    /// Answers for `names` on `addr`; the socket is opened by the calling
    /// thread.
    pub async fn start(
        addr: SocketAddr,
        names: BTreeMap<String, Ipv4Addr>,
    ) -> std::io::Result<Self> {
        let sock = tokio::net::UdpSocket::bind(addr).await?;
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                if let Some((name, reply)) = answer(&buf[..n], &names) {
                    log.lock().unwrap().push(name);
                    let _ = sock.send_to(&reply, peer).await;
                }
            }
        });
        Ok(Self { asked, task })
    }

    /// The names asked for so far (one entry per query).
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// The question's name and the reply to `q`; `None` for a malformed query.
fn answer(q: &[u8], names: &BTreeMap<String, Ipv4Addr>) -> Option<(String, Vec<u8>)> {
    let mut labels = Vec::new();
    let mut i = 12;
    while *q.get(i)? != 0 {
        let len = usize::from(q[i]);
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).into_owned());
        i += 1 + len;
    }
    let question_end = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let name = labels.join(".").to_ascii_lowercase();
    let found = names.get(&name);
    let mut r = Vec::new();
    r.extend_from_slice(q.get(..2)?); // id
    // Response, recursion available; NXDOMAIN for an unknown name.
    r.extend_from_slice(&[0x81, if found.is_some() { 0x80 } else { 0x83 }]);
    let answers = u16::from(found.is_some() && qtype == 1);
    for count in [1, answers, 0, 0] {
        r.extend_from_slice(&u16::to_be_bytes(count));
    }
    r.extend_from_slice(q.get(12..question_end)?);
    if let (Some(ip), 1) = (found, answers) {
        // Name pointer to the question, A, IN, TTL 60, 4 bytes.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some((name, r))
}
