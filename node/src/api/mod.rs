//! The agent's API transport: a Unix socket in the data dir (the local channel on the same
//! machine, guarded by file permissions) and QUIC with mutual TLS (any peer, from anywhere;
//! see `net`). Both carry the same framing and messages.
//!
//! Framing: a 4-byte big-endian length, then a `wire` envelope. A request gets one response,
//! except `Logs`, answered by `LogChunk`s until one has `end = true`.

use std::path::Path;

use starling_protocol::wire::{self, ApiRequest, ApiResponse, Check, MESSAGE_BYTES_MAX, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Errors of the API transport.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Could not reach the agent.
    #[error(
        "cannot reach the agent at {path}: {source} (is `starling agent --data-dir {dir}` running?)"
    )]
    Connect {
        /// The socket.
        path: String,
        /// Its data dir.
        dir: String,
        /// The error.
        source: std::io::Error,
    },
    /// The connection failed mid-way.
    #[error("connection to the agent failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something undecodable.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A QUIC exchange failed.
    #[error("{0}")]
    Remote(String),
}

/// The socket file inside a data dir.
pub fn socket_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("api.sock")
}

/// Reads one framed message. `Ok(None)` on a clean end of stream.
pub async fn read_frame<M, R>(reader: &mut R) -> Result<Option<M>, ApiError>
where
    M: serde::de::DeserializeOwned + Check,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match reader.read(&mut len[got..]).await? {
            // Only an end between frames is clean.
            0 if got == 0 => return Ok(None),
            0 => {
                return Err(truncated(format!(
                    "the stream ended {got} bytes into a frame's length"
                )));
            }
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge {
            bytes: len,
            max: MESSAGE_BYTES_MAX,
        }
        .into());
    }
    let mut body = vec![0u8; len];
    match reader.read_exact(&mut body).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(truncated(format!(
                "the stream ended inside a frame of {len} bytes"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Some(wire::decode(&body)?))
}

fn truncated(why: String) -> ApiError {
    WireError::Malformed(format!("truncated: {why}")).into()
}

/// Writes one framed message.
pub async fn write_frame<M, W>(writer: &mut W, message: &M) -> Result<(), ApiError>
where
    M: serde::Serialize,
    W: AsyncWrite + Unpin,
{
    let body = wire::encode(message)?;
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        bytes: body.len(),
        max: MESSAGE_BYTES_MAX,
    })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(&body).await?;
    writer.flush().await?;
    Ok(())
}

/// A client of an agent: the local one over its socket, or any peer over QUIC.
pub struct Client {
    inner: Inner,
}

enum Inner {
    Local(UnixStream),
    Remote {
        quic: Box<crate::net::quic::Quic>,
        addr: std::net::SocketAddr,
        stream: Option<(quinn::SendStream, quinn::RecvStream)>,
    },
}

impl Client {
    /// Connects to the agent whose data dir is `data_dir`.
    pub async fn connect(data_dir: &Path) -> Result<Self, ApiError> {
        let path = socket_path(data_dir);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ApiError::Connect {
                path: path.display().to_string(),
                dir: data_dir.display().to_string(),
                source,
            })?;
        Ok(Client {
            inner: Inner::Local(stream),
        })
    }

    /// Connects to the agent whose QUIC address is `addr`, with a user (or node) certificate.
    pub async fn connect_quic(
        addr: std::net::SocketAddr,
        identity: &crate::net::tls::TlsIdentity,
    ) -> Result<Self, ApiError> {
        let config = crate::net::tls::client_config(identity)
            .map_err(|e| ApiError::Remote(e.to_string()))?;
        let quic =
            crate::net::quic::Quic::dialer(config).map_err(|e| ApiError::Remote(e.to_string()))?;
        quic.connect(addr)
            .await
            .map_err(|e| ApiError::Remote(e.to_string()))?;
        Ok(Client {
            inner: Inner::Remote {
                quic: Box::new(quic),
                addr,
                stream: None,
            },
        })
    }

    /// Sends a request and returns the first response.
    pub async fn call(&mut self, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        match &mut self.inner {
            Inner::Local(stream) => write_frame(stream, request).await?,
            Inner::Remote { quic, addr, stream } => {
                let request = starling_protocol::wire::Request::Api(request.clone());
                let opened = quic
                    .open(*addr, &request)
                    .await
                    .map_err(|e| ApiError::Remote(e.to_string()))?;
                *stream = Some(opened);
            }
        }
        self.next().await
    }

    /// Ends the call: a QUIC connection is closed at once (the agent frees its slot now, not
    /// at its idle timeout); the local socket just drops.
    pub async fn close(self) {
        if let Inner::Remote { quic, .. } = self.inner {
            quic.close_now().await;
        }
    }

    /// The next response on this connection (for streamed answers such as logs).
    pub async fn next(&mut self) -> Result<ApiResponse, ApiError> {
        let eof = || {
            ApiError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            ))
        };
        match &mut self.inner {
            Inner::Local(stream) => read_frame(stream).await?.ok_or_else(eof),
            Inner::Remote { stream, .. } => {
                let (_, recv) = stream.as_mut().ok_or_else(eof)?;
                read_frame(recv).await?.ok_or_else(eof)
            }
        }
    }
}
