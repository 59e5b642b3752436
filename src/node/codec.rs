//! The request-response codec of the direct protocol (`/tidemark/direct/2`): every request
//! is one CBOR-encoded [`Message`](crate::gossip::Message) in a frame, answered by an empty
//! frame (an acknowledgement; replies travel as requests of their own).
//!
//! A frame is a 4-byte big-endian length followed by that many bytes. Frames longer than
//! [`MAX_MESSAGE_BYTES`](crate::gossip::MAX_MESSAGE_BYTES) are refused before anything is
//! read into memory.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::gossip::MAX_MESSAGE_BYTES;

/// The protocol id of direct messages.
pub const DIRECT_PROTOCOL: StreamProtocol = StreamProtocol::new("/tidemark/direct/2");

/// Length-prefixed frames of encoded messages.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|l| *l as usize <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await?;
    io.close().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> impl std::future::Future<Output = io::Result<Vec<u8>>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io)
    }

    fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> impl std::future::Future<Output = io::Result<Vec<u8>>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    #[test]
    fn a_frame_round_trips_and_an_oversized_one_is_refused_before_reading() {
        futures::executor::block_on(async {
            let mut out = Cursor::new(Vec::new());
            FrameCodec
                .write_request(&DIRECT_PROTOCOL, &mut out, b"hello".to_vec())
                .await
                .unwrap();
            let mut input = Cursor::new(out.into_inner());
            let got = FrameCodec
                .read_request(&DIRECT_PROTOCOL, &mut input)
                .await
                .unwrap();
            assert_eq!(got, b"hello");

            let mut huge = Cursor::new(u32::MAX.to_be_bytes().to_vec());
            let err = FrameCodec
                .read_request(&DIRECT_PROTOCOL, &mut huge)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);

            let mut short = Cursor::new(vec![0, 0, 0, 9, 1, 2]);
            assert!(FrameCodec
                .read_request(&DIRECT_PROTOCOL, &mut short)
                .await
                .is_err());
        });
    }
}
