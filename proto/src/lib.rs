//! Generated protobuf and gRPC code of Talon's contracts; no logic lives here.
//!
//! - [`api`]: the admin API of the master (`api.proto`).
//! - [`client`]: the endpoint protocol between clients and frontends (`client.proto`).
//! - [`bus`]: batches of rows between nodes over NATS (`bus.proto`).
//! - [`codec`]: the protobuf codec of client streams, with small buffers.

/// The admin API (`proto/api.proto`).
pub mod api {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("talon.api");
}

/// The endpoint protocol (`proto/client.proto`).
pub mod client {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("talon.client");
}

/// Batches between nodes (`proto/bus.proto`).
pub mod bus {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("talon.bus");
}

/// Codec configuration for generated services.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec, ProstCodec};

    /// Initial encode/decode buffer of a client stream (tonic's default is 8 KiB). Buffers
    /// grow as messages need; idle streams keep only this.
    pub const CLIENT_STREAM_BUFFER: usize = 1024;

    /// The prost codec with small initial buffers, for the many idle client streams.
    #[derive(Debug, Clone, Copy)]
    pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallBufferCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for SmallBufferCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
        type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(CLIENT_STREAM_BUFFER, 32 * 1024))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(CLIENT_STREAM_BUFFER, 32 * 1024))
        }
    }
}
