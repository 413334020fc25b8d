//! Prost encoding for long-lived streams, with small first buffers.
//!
//! tonic's default codec gives every stream an 8 KiB encode buffer and an
//! 8 KiB decode buffer, held for the stream's life. A control plane holds
//! a few streams for each of thousands of proxies, whose messages are
//! mostly well under 1 KiB: the buffers start at `FIRST_BUFFER` and grow
//! only for a message that needs it.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first size of a stream's encode and decode buffers.
pub const FIRST_BUFFER: usize = 512;
/// As tonic's default: encoded messages are sent once this much is ready.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

/// `tonic_prost::ProstCodec` with small first buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
