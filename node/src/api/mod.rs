//! The agent's API transport. For now a Unix socket in the data dir (the local channel the
//! CLI uses on the same machine); the QUIC API with mutual TLS joins it in the fleet issue and
//! reuses the same framing and messages.
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
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
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
    reader.read_exact(&mut body).await?;
    Ok(Some(wire::decode(&body)?))
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

/// A client of a local agent.
pub struct Client {
    stream: UnixStream,
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
        Ok(Client { stream })
    }

    /// Sends a request and returns the first response.
    pub async fn call(&mut self, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        write_frame(&mut self.stream, request).await?;
        self.next().await
    }

    /// The next response on this connection (for streamed answers such as logs).
    pub async fn next(&mut self) -> Result<ApiResponse, ApiError> {
        read_frame(&mut self.stream).await?.ok_or_else(|| {
            ApiError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            ))
        })
    }
}
