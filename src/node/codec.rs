//! Framing of the direct protocol (`/tidemark/direct/11`): each node keeps one long-lived
//! stream to each peer it sends to, and writes on it a sequence of frames, each one
//! CBOR-encoded [`Message`](crate::gossip::Message). Nothing is answered on the stream;
//! replies travel as messages of their own, on the replier's stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes. Frames longer than
//! [`MAX_MESSAGE_BYTES`](crate::gossip::MAX_MESSAGE_BYTES) are refused before anything is
//! read into memory.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::gossip::MAX_MESSAGE_BYTES;

/// The protocol id of direct messages.
pub const DIRECT_PROTOCOL: StreamProtocol = StreamProtocol::new("/tidemark/direct/11");

/// The wire protocol's version (docs/PROTOCOL.md §8): the number at the end of
/// [`DIRECT_PROTOCOL`] and of the identify string `/tidemark/<network>/<version>`.
pub const PROTOCOL_VERSION: u32 = 11;

/// Reads one frame; an error ends the stream (a short read, or a length over the limit).
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Vec<u8>> {
    read_frame_limited(io, MAX_MESSAGE_BYTES).await
}

/// Writes one frame (not flushed: the writer flushes once its queue is empty).
pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, data: &[u8]) -> io::Result<()> {
    write_frame_limited(io, data, MAX_MESSAGE_BYTES).await
}

/// Reads one frame of at most `max` bytes, refusing a longer one before reading it.
pub async fn read_frame_limited<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let len = read_frame_len(io, max).await?;
    read_frame_body(io, len).await
}

/// Reads a frame's length, refusing one over `max`; its body follows.
pub async fn read_frame_len<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    Ok(len)
}

/// Reads a frame's body of `len` bytes.
pub async fn read_frame_body<T: AsyncRead + Unpin>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame of at most `max` bytes (not flushed).
pub async fn write_frame_limited<T: AsyncWrite + Unpin>(
    io: &mut T,
    data: &[u8],
    max: usize,
) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|l| *l as usize <= max)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[test]
    fn the_direct_protocol_carries_the_protocol_version() {
        assert_eq!(
            DIRECT_PROTOCOL.as_ref(),
            format!("/tidemark/direct/{PROTOCOL_VERSION}")
        );
    }

    #[test]
    fn frames_round_trip_in_sequence_and_an_oversized_one_is_refused_before_reading() {
        futures::executor::block_on(async {
            let mut out = Cursor::new(Vec::new());
            write_frame(&mut out, b"hello").await.unwrap();
            write_frame(&mut out, b"").await.unwrap();
            write_frame(&mut out, b"world").await.unwrap();
            let mut input = Cursor::new(out.into_inner());
            assert_eq!(read_frame(&mut input).await.unwrap(), b"hello");
            assert_eq!(read_frame(&mut input).await.unwrap(), b"");
            assert_eq!(read_frame(&mut input).await.unwrap(), b"world");
            assert!(read_frame(&mut input).await.is_err(), "end of stream");

            let mut huge = Cursor::new(u32::MAX.to_be_bytes().to_vec());
            let err = read_frame(&mut huge).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);

            let mut short = Cursor::new(vec![0, 0, 0, 9, 1, 2]);
            assert!(read_frame(&mut short).await.is_err());
        });
    }
}
