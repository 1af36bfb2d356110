//! A raw TLS client over std sockets (rustls): to see which certificate the
//! server presents, to keep one connection open across a rotation, and to send
//! half a request body and hang up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// A client config trusting only the PEM CA at `ca`, for the given TLS versions
/// (empty: rustls' defaults, 1.2 and 1.3).
pub fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let pem = std::fs::read(ca).expect("read CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()));
    let builder = if versions.is_empty() {
        builder.with_safe_default_protocol_versions()
    } else {
        builder.with_protocol_versions(versions)
    }
    .expect("protocol versions");
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTP/1.1-over-TLS connection.
pub struct TlsConn {
    stream: StreamOwned<ClientConnection, TcpStream>,
    host: String,
}

/// An HTTP response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl TlsConn {
    /// Connects to `addr` as `127.0.0.1` and completes the handshake.
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsConn, String> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = ClientConnection::new(config, name).map_err(|e| format!("client: {e}"))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        Ok(TlsConn {
            stream,
            host: addr.to_string(),
        })
    }

    /// DER of the certificate the server presented.
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .expect("server certificate")[0]
            .to_vec()
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    /// Writes a request head (with `Host`) and as much of `body` as given.
    pub fn send_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> std::io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.flush()
    }

    pub fn send_body(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// A whole request with a `Content-Length` body; reads the response. The
    /// connection stays open (keep-alive) for the next one.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<RawResponse, String> {
        let mut all: Vec<(&str, String)> = headers.to_vec();
        all.push(("Content-Length", body.len().to_string()));
        self.send_head(method, path, &all)
            .map_err(|e| format!("write: {e}"))?;
        self.send_body(body).map_err(|e| format!("write: {e}"))?;
        self.read_response(method == "HEAD")
    }

    /// Reads one response with a `Content-Length` (or no) body.
    pub fn read_response(&mut self, head_only: bool) -> Result<RawResponse, String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed after {} bytes of head",
                        buf.len()
                    ));
                }
                Ok(_) => buf.push(byte[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
            if buf.len() > 64 * 1024 {
                return Err("response head too long".into());
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only {
            return Ok(response);
        }
        if response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            response.body = self.read_chunked()?;
            return Ok(response);
        }
        let len: usize = response
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        response.body = body;
        Ok(response)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            match self.stream.read(&mut byte) {
                Ok(0) => return Err("connection closed inside a chunked body".into()),
                Ok(_) => line.push(byte[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
            if line.len() > 4096 {
                return Err("chunk line too long".into());
            }
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|e| e.to_string())
    }

    /// A `Transfer-Encoding: chunked` body, trailers skipped.
    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.stream
                .read_exact(&mut body[start..])
                .map_err(|e| format!("read chunk: {e}"))?;
            if !self.read_line()?.is_empty() {
                return Err("chunk not followed by CRLF".into());
            }
        }
    }

    /// Waits up to `limit` for the server to close the connection (EOF, reset,
    /// close_notify); `false` if it is still open then. Reads and drops any bytes.
    pub fn wait_closed(&mut self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.stream.sock.set_read_timeout(Some(left));
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Closes the TCP connection at once, without a TLS close_notify.
    pub fn abort(self) {
        let _ = self.stream.sock.shutdown(std::net::Shutdown::Both);
    }
}
