//! The PROXY protocol (HAProxy's `proxy-protocol.txt`) from trusted proxies: a load balancer
//! in front of the node opens each connection with a header naming the client's address, and
//! that address, not the balancer's, becomes the connection's peer (admission per address,
//! login and registration throttles, logs).
//!
//! Only connections from `server.proxy_protocol_from` ([`TrustedProxies`]) are read this way,
//! and each of them must start with a header: version 2 (binary) or version 1 (text). A
//! connection from anywhere else is served as it always was; a header from it is not honoured
//! (it is not a chat frame: a protocol error). The header is read before the connection's
//! tasks exist (and before a TLS handshake), byte-exact (nothing after it is taken from the
//! socket), at most [`MAX_HEADER`] bytes, under the caller's deadline.
//!
//! `LOCAL` (a proxy's own health check), `UNKNOWN` and the unspecified or UNIX address families
//! keep the connection's own address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature, the first 12 bytes of a v2 header.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// What follows the fixed part at most (addresses, at most 216 bytes, and TLVs).
const V2_MAX_PAYLOAD: usize = 512;
/// The longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The v1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The shortest header of either version (`PROXY UNKNOWN\r\n`): the first read takes this
/// much, which never reaches past any header.
const SHORTEST: usize = 15;

/// The most bytes a header may take; past it the connection is refused.
pub const MAX_HEADER: usize = V2_FIXED + V2_MAX_PAYLOAD;

/// What a header says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The proxy relays a client: this is the client's address.
    Proxied(SocketAddr),
    /// The proxy speaks for itself (`LOCAL`, a health check) or does not know the client's
    /// address (`UNKNOWN`, unspecified or UNIX family): the connection's own address stays.
    Local,
}

/// Where parsing stands on the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes (the buffer's first `len`).
    Done { header: Header, len: usize },
    /// Not complete: at least this many more bytes belong to the header (read exactly these,
    /// never more: what follows the header is the chat protocol's).
    Need(usize),
}

/// Why a trusted connection's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (neither the v2 signature nor \"PROXY \")")]
    NotProxy,
    #[error("PROXY v2 header of version {0}, not 2")]
    Version(u8),
    #[error("PROXY v2 header with the unknown command {0}")]
    Command(u8),
    #[error("PROXY v2 header with the unknown address family or transport {0:#04x}")]
    Family(u8),
    #[error("PROXY v2 header with {0} bytes of addresses, too few for its family")]
    Short(usize),
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("malformed PROXY v1 line")]
    V1,
    #[error("the connection closed before its PROXY header was complete")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(io::ErrorKind),
}

impl ProxyError {
    /// The metric label of the error (`chat_zinx_proxy_headers_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Closed | ProxyError::Io(_) => "closed",
            _ => "invalid",
        }
    }
}

/// Parses the start of a connection: a whole header, how many more bytes it needs at least,
/// or why it is not one. Never looks past `buf`, and never asks for more than [`MAX_HEADER`]
/// bytes in all.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len();
    let v2 = buf.len().min(V2_SIG.len());
    let v1 = buf.len().min(V1_PREFIX.len());
    if buf[..v2] == V2_SIG[..v2] {
        if n < V2_FIXED {
            return Ok(Parsed::Need(
                if n < SHORTEST { SHORTEST } else { V2_FIXED } - n,
            ));
        }
        return parse_v2(buf);
    }
    if buf[..v1] == V1_PREFIX[..v1] {
        if n < SHORTEST {
            return Ok(Parsed::Need(SHORTEST - n));
        }
        return parse_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Version(ver_cmd >> 4));
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return Err(ProxyError::Command(command));
    }
    if fam >> 4 > 3 || fam & 0x0f > 2 {
        return Err(ProxyError::Family(fam));
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    let len = V2_FIXED + payload;
    if buf.len() < len {
        return Ok(Parsed::Need(len - buf.len()));
    }
    let a = &buf[V2_FIXED..len];
    let header = match (command, fam >> 4) {
        // LOCAL: the proxy's own connection, whatever the rest says.
        (0, _) | (_, 0) | (_, 3) => Header::Local,
        (_, 1) => {
            if a.len() < 12 {
                return Err(ProxyError::Short(a.len()));
            }
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Header::Proxied(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        _ => {
            if a.len() < 36 {
                return Err(ProxyError::Short(a.len()));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Header::Proxied(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
    };
    Ok(Parsed::Done { header, len })
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(cr) = buf.iter().position(|&b| b == b'\r') else {
        if buf.contains(&b'\n') {
            return Err(ProxyError::V1);
        }
        // At least the CRLF is still to come.
        return if buf.len() + 2 > V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Need(2))
        };
    };
    if cr + 2 > V1_MAX {
        return Err(ProxyError::TooLong);
    }
    match buf.get(cr + 1) {
        None => return Ok(Parsed::Need(1)),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1),
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr]).map_err(|_| ProxyError::V1)?;
    if line.contains('\n') {
        return Err(ProxyError::V1);
    }
    let len = cr + 2;
    let mut parts = line.split(' ');
    let header = match parts.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(ProxyError::V1);
            };
            let (src, dst) = match family {
                "TCP4" => (
                    src.parse::<Ipv4Addr>().map(IpAddr::V4),
                    dst.parse::<Ipv4Addr>().map(IpAddr::V4),
                ),
                _ => (
                    src.parse::<Ipv6Addr>().map(IpAddr::V6),
                    dst.parse::<Ipv6Addr>().map(IpAddr::V6),
                ),
            };
            let (Ok(src), Ok(_), Some(sport), Some(_)) = (src, dst, port(sport), port(dport))
            else {
                return Err(ProxyError::V1);
            };
            Header::Proxied(SocketAddr::new(src, sport))
        }
        _ => return Err(ProxyError::V1),
    };
    Ok(Parsed::Done { header, len })
}

/// A v1 port: decimal digits only, 0-65535.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads a PROXY header from the start of `io`, taking exactly its bytes from the stream
/// (at most [`MAX_HEADER`]). The caller bounds the time it may take.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<Header, ProxyError> {
    let mut buf = [0u8; MAX_HEADER];
    let mut have = 0;
    loop {
        match parse(&buf[..have])? {
            Parsed::Done { header, .. } => return Ok(header),
            Parsed::Need(need) => {
                let end = (have + need).min(MAX_HEADER);
                if end == have {
                    return Err(ProxyError::TooLong);
                }
                let got = io
                    .read(&mut buf[have..end])
                    .await
                    .map_err(|e| ProxyError::Io(e.kind()))?;
                if got == 0 {
                    return Err(ProxyError::Closed);
                }
                have += got;
            }
        }
    }
}

/// The addresses whose connections must start with a PROXY header
/// (`server.proxy_protocol_from`): networks, each an address and a prefix length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// From networks (`(address, prefix length)`; a longer prefix than the family has counts
    /// as the whole address). IPv4-mapped IPv6 addresses count as IPv4.
    pub fn new(nets: impl IntoIterator<Item = (IpAddr, u8)>) -> Self {
        TrustedProxies(
            nets.into_iter()
                .map(|(ip, bits)| {
                    let ip = canonical(ip);
                    let bits = bits.min(if ip.is_ipv4() { 32 } else { 128 });
                    (mask(ip, bits), bits)
                })
                .collect(),
        )
    }

    /// No trusted proxy: the PROXY protocol is off.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a connection from `ip` must start with a PROXY header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|&(net, bits)| net.is_ipv4() == ip.is_ipv4() && mask(ip, bits) == net)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(bits.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::future::Future;

    /// A v2 header: `cmd` (0 LOCAL, 1 PROXY), `fam` byte, then `payload`.
    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut p = src.to_vec();
        p.extend_from_slice(&[10, 0, 0, 1]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&9000u16.to_be_bytes());
        v2(1, 0x11, &p)
    }

    /// Runs `read_header` over `input` (always ready): the result and the bytes it took.
    fn read_all(input: &[u8]) -> (Result<Header, ProxyError>, usize) {
        let mut rest = input;
        let r = {
            let fut = read_header(&mut rest);
            let mut fut = std::pin::pin!(fut);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => unreachable!("a slice is always ready"),
            }
        };
        (r, input.len() - rest.len())
    }

    #[test]
    fn v2_tcp4_names_the_client_and_takes_exactly_the_header() {
        let mut bytes = tcp4([203, 0, 113, 7], 51234);
        let header_len = bytes.len();
        bytes.extend_from_slice(b"\x05\x00\x00\x00chat");
        let (r, took) = read_all(&bytes);
        assert_eq!(r, Ok(Header::Proxied("203.0.113.7:51234".parse().unwrap())));
        assert_eq!(took, header_len);
    }

    #[test]
    fn v2_tcp6_with_tlvs() {
        let mut p = Vec::new();
        p.extend_from_slice(&"2001:db8::42".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p.extend_from_slice(&443u16.to_be_bytes());
        p.extend_from_slice(&9000u16.to_be_bytes());
        // A TLV (PP2_TYPE_NOOP, 3 bytes) after the addresses.
        p.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
        let bytes = v2(1, 0x21, &p);
        assert_eq!(
            read_all(&bytes),
            (
                Ok(Header::Proxied("[2001:db8::42]:443".parse().unwrap())),
                bytes.len()
            )
        );
    }

    #[test]
    fn local_unspec_and_unix_keep_the_connection_address() {
        for bytes in [
            v2(0, 0x00, &[]),
            v2(0, 0x11, &[0; 12]),
            v2(1, 0x00, &[]),
            v2(1, 0x31, &[0; 216]),
        ] {
            assert_eq!(read_all(&bytes), (Ok(Header::Local), bytes.len()));
        }
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        let mut wrong_version = tcp4([1, 2, 3, 4], 1);
        wrong_version[12] = 0x11;
        assert_eq!(read_all(&wrong_version).0, Err(ProxyError::Version(1)));
        assert_eq!(
            read_all(&v2(2, 0x11, &[0; 12])).0,
            Err(ProxyError::Command(2))
        );
        assert_eq!(
            read_all(&v2(1, 0x41, &[0; 12])).0,
            Err(ProxyError::Family(0x41))
        );
        assert_eq!(read_all(&v2(1, 0x11, &[0; 8])).0, Err(ProxyError::Short(8)));
        assert_eq!(
            read_all(&v2(1, 0x21, &[0; 12])).0,
            Err(ProxyError::Short(12))
        );
        // Too long: refused on the length field, before reading the rest.
        let mut long = v2(1, 0x11, &[]);
        long[14..16].copy_from_slice(&513u16.to_be_bytes());
        assert_eq!(read_all(&long), (Err(ProxyError::TooLong), V2_FIXED));
        // Cut short.
        let whole = tcp4([1, 2, 3, 4], 1);
        assert_eq!(read_all(&whole[..20]).0, Err(ProxyError::Closed));
        assert_eq!(read_all(&whole[..3]).0, Err(ProxyError::Closed));
    }

    #[test]
    fn v1_lines() {
        let cases: [(&[u8], Result<Header, ProxyError>); 10] = [
            (
                b"PROXY TCP4 192.0.2.1 10.0.0.1 40000 9000\r\n",
                Ok(Header::Proxied("192.0.2.1:40000".parse().unwrap())),
            ),
            (
                b"PROXY TCP6 2001:db8::1 ::1 40000 9000\r\n",
                Ok(Header::Proxied("[2001:db8::1]:40000".parse().unwrap())),
            ),
            (b"PROXY UNKNOWN\r\n", Ok(Header::Local)),
            (b"PROXY UNKNOWN ff:: ::1 1 2\r\n", Ok(Header::Local)),
            (b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n", Err(ProxyError::V1)),
            (
                b"PROXY TCP4 192.0.2.1 10.0.0.1 70000 9000\r\n",
                Err(ProxyError::V1),
            ),
            (
                b"PROXY TCP4 192.0.2.1 10.0.0.1 +1 9000\r\n",
                Err(ProxyError::V1),
            ),
            (
                b"PROXY TCP4 192.0.2.1  10.0.0.1 1 9000\r\n",
                Err(ProxyError::V1),
            ),
            (
                b"PROXY UDP4 192.0.2.1 10.0.0.1 1 9000\r\n",
                Err(ProxyError::V1),
            ),
            (
                b"PROXY TCP4 192.0.2.1 10.0.0.1 1 9000\n\r",
                Err(ProxyError::V1),
            ),
        ];
        for (line, want) in cases {
            let mut bytes = line.to_vec();
            bytes.extend_from_slice(b"\x05\x00\x00\x00");
            let (got, took) = read_all(&bytes);
            assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
            if want.is_ok() {
                assert_eq!(took, line.len());
            }
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert_eq!(read_all(&long).0, Err(ProxyError::TooLong));
    }

    #[test]
    fn a_chat_frame_is_not_a_header() {
        let frame = crate::protocol::codec::encode(2, br#"{"UserName":"alice"}"#);
        assert_eq!(read_all(&frame), (Err(ProxyError::NotProxy), SHORTEST));
        assert_eq!(read_all(b"GET / HTTP/1.1\r\n").0, Err(ProxyError::NotProxy));
    }

    #[test]
    fn trusted_networks() {
        let t = TrustedProxies::new([
            ("10.0.0.0".parse().unwrap(), 8),
            ("192.0.2.7".parse().unwrap(), 32),
            ("2001:db8::".parse().unwrap(), 32),
        ]);
        let yes = ["10.1.2.3", "192.0.2.7", "::ffff:10.0.0.1", "2001:db8:1::5"];
        let no = ["11.0.0.1", "192.0.2.8", "2001:db9::1", "127.0.0.1"];
        for ip in yes {
            assert!(t.trusts(ip.parse().unwrap()), "{ip}");
        }
        for ip in no {
            assert!(!t.trusts(ip.parse().unwrap()), "{ip}");
        }
        assert!(TrustedProxies::default().is_empty());
        let all = TrustedProxies::new([("0.0.0.0".parse().unwrap(), 0)]);
        assert!(all.trusts("198.51.100.1".parse().unwrap()));
        assert!(!all.trusts("::1".parse().unwrap()));
    }

    proptest! {
        /// Whatever the bytes, parsing never panics, reading never takes more than the bound,
        /// and a header it accepts is exactly the bytes it took.
        #[test]
        fn arbitrary_bytes_never_panic_nor_overread(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let (r, took) = read_all(&bytes);
            prop_assert!(took <= MAX_HEADER);
            if r.is_ok() {
                let parsed = parse(&bytes[..took]);
                let done = matches!(parsed, Ok(Parsed::Done { len, .. }) if len == took);
                prop_assert!(done);
            }
        }

        /// The same with a valid start: a v2 signature or "PROXY " and random bytes after.
        #[test]
        fn arbitrary_tails_after_a_prefix(v2_start in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut bytes = if v2_start { V2_SIG.to_vec() } else { V1_PREFIX.to_vec() };
            bytes.extend_from_slice(&tail);
            let (r, took) = read_all(&bytes);
            prop_assert!(took <= MAX_HEADER);
            if r.is_ok() {
                let done = matches!(parse(&bytes[..took]), Ok(Parsed::Done { len, .. }) if len == took);
                prop_assert!(done);
            }
        }

        /// A valid header followed by anything: the header's address, and the rest untouched.
        #[test]
        fn a_valid_header_leaves_what_follows(a in any::<[u8; 4]>(), port in any::<u16>(), v1 in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = if v1 {
                format!("PROXY TCP4 {} 10.0.0.1 {port} 9000\r\n", Ipv4Addr::from(a)).into_bytes()
            } else {
                tcp4(a, port)
            };
            let len = bytes.len();
            bytes.extend_from_slice(&tail);
            let (r, took) = read_all(&bytes);
            prop_assert_eq!(r, Ok(Header::Proxied(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))));
            prop_assert_eq!(took, len);
        }
    }
}
